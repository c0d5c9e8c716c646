-- keygate: API-key records (SQLite). Hashes only: no plaintext key is ever stored.
--
-- ids are lowercase hyphenated UUIDs, so text order is the UUID's byte order (the order
-- `KeyId` sorts in); instants are microseconds since the Unix epoch, UTC.
CREATE TABLE keygate_keys (
    id           TEXT    NOT NULL PRIMARY KEY
                         CHECK (length(id) = 36 AND id = lower(id)),
    format       TEXT    NOT NULL CHECK (format IN ('opaque', 'jwt')),
    hash_version INTEGER CHECK (hash_version BETWEEN 0 AND 4294967295),
    hash_digest  BLOB    CHECK (length(hash_digest) = 32),
    name         TEXT    NOT NULL,
    description  TEXT,
    owner_id     TEXT    NOT NULL,
    created_by   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    active       INTEGER NOT NULL CHECK (active IN (0, 1)),
    scopes       TEXT    CHECK (scopes IS NULL OR json_type(scopes) = 'array'),
    metadata     TEXT    NOT NULL CHECK (json_type(metadata) = 'object'),
    CHECK ((hash_version IS NULL) = (hash_digest IS NULL))
) STRICT;

CREATE INDEX keygate_keys_owner_id ON keygate_keys (owner_id, id);
