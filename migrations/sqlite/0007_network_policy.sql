-- keygate: where a key may be used from (issue 9): its allowed client networks and browser
-- origins, as JSON `{"cidrs": ["10.0.0.0/8", ...], "origins": ["https://app.example.com", ...]}`
-- (canonical texts, see `NetworkPolicy`). NULL: unrestricted, which is what every key
-- minted before this migration is.
ALTER TABLE keygate_keys
    ADD COLUMN network TEXT
    CHECK (network IS NULL OR (json_valid(network) AND json_type(network) = 'object'));
