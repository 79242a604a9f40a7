-- Verdicts in commit order. AUTOINCREMENT: a cursor is never reused, even after retention
-- deleted the newest rows.
CREATE TABLE verdicts (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id     TEXT    NOT NULL,
    inspection_id  TEXT    NOT NULL,
    line           TEXT,
    lot_id         TEXT,
    panel_id       TEXT,
    unit_position  TEXT,
    recipe         TEXT,
    label          TEXT    NOT NULL,
    is_defect      INTEGER NOT NULL,
    confidence     REAL    NOT NULL,
    model          TEXT    NOT NULL,
    model_version  INTEGER NOT NULL,
    image_sha256   TEXT    NOT NULL,
    note           TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    stored_at_ms   INTEGER NOT NULL,
    verdict        TEXT    NOT NULL,
    bytes          INTEGER NOT NULL,
    UNIQUE (station_id, inspection_id)
);
CREATE INDEX verdicts_stored_at ON verdicts (stored_at_ms);
CREATE INDEX verdicts_station ON verdicts (station_id, seq);
CREATE INDEX verdicts_line ON verdicts (line, seq);
CREATE INDEX verdicts_lot ON verdicts (lot_id, seq);

-- Images of defects and unsure verdicts, kept for review and retraining when configured.
CREATE TABLE retained_images (
    seq   INTEGER PRIMARY KEY,
    image BLOB    NOT NULL,
    bytes INTEGER NOT NULL
);

-- Positions and leases of internal consumers (the MQTT publisher's outbox cursor).
CREATE TABLE consumer_cursors (
    name           TEXT    PRIMARY KEY,
    cursor         INTEGER NOT NULL DEFAULT 0,
    holder         TEXT,
    lease_until_ms INTEGER NOT NULL DEFAULT 0
);
