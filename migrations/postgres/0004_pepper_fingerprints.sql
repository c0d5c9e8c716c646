-- keygate: a keyed fingerprint of each pepper version the store's keys are hashed under
-- (HMAC-SHA256(pepper, 'keygate pepper fingerprint v1'), see `PepperFingerprint`), so that
-- a process configured with another pepper is told so instead of minting keys that never
-- verify. One row per version, written once, never updated.
CREATE TABLE IF NOT EXISTS keygate_peppers (
    version     BIGINT      PRIMARY KEY CHECK (version BETWEEN 0 AND 4294967295),
    fingerprint BYTEA       NOT NULL CHECK (octet_length(fingerprint) = 32),
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
