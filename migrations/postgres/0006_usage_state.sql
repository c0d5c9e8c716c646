-- keygate: the mutable state of rate limits and credits (issue 9), one row per subject
-- (`key:<id>` or `owner:<user id>`), so that one `INSERT ... ON CONFLICT` locks all of a
-- subject's state and a check is one atomic statement (see `PostgresStore`'s `Limiter`).
-- `tats`: limit name -> GCRA theoretical arrival time, ns since the epoch (expired entries
-- are pruned on write). `credits`/`last_refill`/`set_at`: a key's credit count, the refill
-- instant last applied and the policy instant the count started from (µs; NULL: none yet).
-- `version` counts writes, so a row created concurrently is detected and the check retried.
CREATE TABLE IF NOT EXISTS keygate_usage (
    subject     TEXT        PRIMARY KEY,
    tats        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    credits     BIGINT      CHECK (credits >= 0),
    last_refill BIGINT,
    set_at      BIGINT,
    version     BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
