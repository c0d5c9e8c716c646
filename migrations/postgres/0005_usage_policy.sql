-- keygate: each key's usage policy (issue 9), in Unkey's JSON shapes: `ratelimits` is an
-- array of {"name","limit","duration","autoApply"[,"burst"]}, `credits` an object
-- {"remaining"[,"refill":{"interval","amount"[,"refillDay"]}][,"setAt"]} or NULL for none.
-- Only the policy: the usage state (theoretical arrival times, credits left) lives in the
-- gate's limiter. Rows written before this migration have no limits and no credits.
ALTER TABLE keygate_keys
    ADD COLUMN ratelimits JSONB NOT NULL DEFAULT '[]'::jsonb
        CHECK (jsonb_typeof(ratelimits) = 'array'),
    ADD COLUMN credits JSONB CHECK (credits IS NULL OR jsonb_typeof(credits) = 'object');
