-- The review cursor counter: one row, locked by each inserting transaction until it commits,
-- so review cursors follow commit order (as verdict_cursor does for verdicts).
CREATE TABLE review_cursor (
    id   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    last BIGINT  NOT NULL
);
INSERT INTO review_cursor (id, last) VALUES (TRUE, 0);

-- Reviews: a person's judgement of a stored verdict, kept beside it (the verdict row is never
-- changed). One per (verdict, reviewer). `review` is the record as JSON; the other columns are
-- what queries select on.
CREATE TABLE reviews (
    seq            BIGINT  PRIMARY KEY,
    verdict_seq    BIGINT  NOT NULL,
    reviewer       TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    model_version  BIGINT  NOT NULL,
    confirmed      BOOLEAN NOT NULL,
    reviewed_at_ms BIGINT  NOT NULL,
    review         TEXT    NOT NULL,
    UNIQUE (verdict_seq, reviewer)
);
CREATE INDEX reviews_verdict ON reviews (verdict_seq, seq);
