-- keygate: a keyed fingerprint of each pepper version the store's keys are hashed under
-- (HMAC-SHA256(pepper, "keygate pepper fingerprint v1"), see `PepperFingerprint`), so that
-- a process configured with another pepper is told so instead of minting keys that never
-- verify. One row per version, written once, never updated; `recorded_at` is UTC.
CREATE TABLE IF NOT EXISTS keygate_peppers (
    version     INTEGER NOT NULL PRIMARY KEY CHECK (version BETWEEN 0 AND 4294967295),
    fingerprint BLOB    NOT NULL CHECK (length(fingerprint) = 32),
    recorded_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
