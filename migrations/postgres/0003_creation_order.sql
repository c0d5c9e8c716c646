-- keygate: lists come in creation order, `(created_at, id)`, with that pair as the page
-- cursor. TIMESTAMPTZ keeps whole microseconds, as keygate writes them, so cursor
-- comparisons are exact; UUIDs compare in byte order (the order `KeyId` sorts in).
CREATE INDEX keygate_keys_created ON keygate_keys (created_at, id);

-- The per-owner list index, in the same order; it replaces (owner_id, id).
CREATE INDEX keygate_keys_owner_created ON keygate_keys (owner_id, created_at, id);
DROP INDEX keygate_keys_owner_id;
