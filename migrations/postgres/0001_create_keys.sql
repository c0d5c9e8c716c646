-- keygate: API-key records (PostgreSQL). Hashes only: no plaintext key is ever stored.
CREATE TABLE keygate_keys (
    id           UUID        PRIMARY KEY,
    format       TEXT        NOT NULL CHECK (format IN ('opaque', 'jwt')),
    hash_version BIGINT      CHECK (hash_version BETWEEN 0 AND 4294967295),
    hash_digest  BYTEA       CHECK (octet_length(hash_digest) = 32),
    name         TEXT        NOT NULL,
    description  TEXT,
    owner_id     TEXT        NOT NULL,
    created_by   TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    active       BOOLEAN     NOT NULL,
    scopes       JSONB       CHECK (scopes IS NULL OR jsonb_typeof(scopes) = 'array'),
    metadata     JSONB       NOT NULL CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT keygate_keys_hash_whole CHECK ((hash_version IS NULL) = (hash_digest IS NULL))
);

CREATE INDEX keygate_keys_owner_id ON keygate_keys (owner_id, id);
