-- keygate: where a key may be used from (issue 9): its allowed client networks and browser
-- origins, as JSON `{"cidrs": ["10.0.0.0/8", ...], "origins": ["https://app.example.com", ...]}`
-- (canonical texts, see `NetworkPolicy`). NULL: unrestricted, which is what every key
-- minted before this migration is. Adding a nullable column without a default is a
-- catalog-only change: no table rewrite, no long lock.
ALTER TABLE keygate_keys
    ADD COLUMN IF NOT EXISTS network JSONB
    CHECK (network IS NULL OR jsonb_typeof(network) = 'object');
