-- The cursor counter: one row, incremented inside each inserting transaction. Its row lock is
-- held until commit, so cursors are handed out in commit order (a reader never sees cursor N+1
-- committed while N is still in flight).
CREATE TABLE verdict_cursor (
    id   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    last BIGINT  NOT NULL
);
INSERT INTO verdict_cursor (id, last) VALUES (TRUE, 0);

CREATE TABLE verdicts (
    seq            BIGINT           PRIMARY KEY,
    station_id     TEXT             NOT NULL,
    inspection_id  TEXT             NOT NULL,
    line           TEXT,
    lot_id         TEXT,
    panel_id       TEXT,
    unit_position  TEXT,
    recipe         TEXT,
    label          TEXT             NOT NULL,
    is_defect      BOOLEAN          NOT NULL,
    confidence     DOUBLE PRECISION NOT NULL,
    model          TEXT             NOT NULL,
    model_version  BIGINT           NOT NULL,
    image_sha256   TEXT             NOT NULL,
    note           TEXT             NOT NULL,
    received_at_ms BIGINT           NOT NULL,
    stored_at_ms   BIGINT           NOT NULL,
    verdict        TEXT             NOT NULL,
    bytes          BIGINT           NOT NULL,
    UNIQUE (station_id, inspection_id)
);
CREATE INDEX verdicts_stored_at ON verdicts (stored_at_ms);
CREATE INDEX verdicts_station ON verdicts (station_id, seq);
CREATE INDEX verdicts_line ON verdicts (line, seq);
CREATE INDEX verdicts_lot ON verdicts (lot_id, seq);

CREATE TABLE retained_images (
    seq   BIGINT PRIMARY KEY,
    image BYTEA  NOT NULL,
    bytes BIGINT NOT NULL
);

CREATE TABLE consumer_cursors (
    name           TEXT   PRIMARY KEY,
    cursor         BIGINT NOT NULL DEFAULT 0,
    holder         TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0
);
