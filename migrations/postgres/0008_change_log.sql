-- keygate: the change sequence. Every insert, update and delete of a key (last-used
-- times excepted) takes the next number from `keygate_change_seq` and appends
-- `(seq, key_id)` to `keygate_changes` in the same statement, and its NOTIFY carries
-- `<seq>:<key id>`. Taking the number updates the one counter row, whose lock is held to
-- commit, so numbers commit in order and without holes: a node that read the counter at
-- n knows every change up to n is in the log (unless trimmed), and replays what it
-- missed from there. keygate trims the log to its latest 100 000 entries.
CREATE TABLE IF NOT EXISTS keygate_change_seq (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    seq       BIGINT  NOT NULL CHECK (seq >= 0)
);
INSERT INTO keygate_change_seq (singleton, seq) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS keygate_changes (
    seq        BIGINT      PRIMARY KEY,
    key_id     UUID        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
