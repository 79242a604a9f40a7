-- Reviews: a person's judgement of a stored verdict, kept beside it (the verdict row is never
-- changed). One per (verdict, reviewer); seq is the reviews' own cursor (AUTOINCREMENT: never
-- reused). `review` is the record as JSON; the other columns are what queries select on.
CREATE TABLE reviews (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    verdict_seq    INTEGER NOT NULL,
    reviewer       TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    model_version  INTEGER NOT NULL,
    confirmed      INTEGER NOT NULL,
    reviewed_at_ms INTEGER NOT NULL,
    review         TEXT    NOT NULL,
    UNIQUE (verdict_seq, reviewer)
);
CREATE INDEX reviews_verdict ON reviews (verdict_seq, seq);
