-- keygate: the mutable state of rate limits and credits (issue 9), one row per subject
-- (`key:<id>` or `owner:<user id>`), written whole by one atomic statement per check
-- (see `SqliteStore`'s `Limiter`). `updated_at` is UTC.
-- `tats`: limit name -> GCRA theoretical arrival time, ns since the epoch (expired entries
-- are pruned on write). `credits`/`last_refill`/`set_at`: a key's credit count, the refill
-- instant last applied and the policy instant the count started from (µs; NULL: none yet).
-- `version` counts writes.
CREATE TABLE IF NOT EXISTS keygate_usage (
    subject     TEXT    NOT NULL PRIMARY KEY,
    tats        TEXT    NOT NULL DEFAULT '{}',
    credits     INTEGER CHECK (credits >= 0),
    last_refill INTEGER,
    set_at      INTEGER,
    version     INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
