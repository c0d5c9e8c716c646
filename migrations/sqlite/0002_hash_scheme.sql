-- keygate: what each stored hash was computed over (see `HashScheme`).
--
-- Hashes written before this migration are HMACs of the opaque key's secret part alone
-- (or of a JWT's signature): 'secret'. keygate re-hashes an opaque key as 'bound' (over
-- `<prefix>_<id part><secret part>`) after its next successful verify.
ALTER TABLE keygate_keys
    ADD COLUMN hash_scheme TEXT NOT NULL DEFAULT 'secret'
    CHECK (hash_scheme IN ('secret', 'bound'));
