//! Statements both backends run unchanged, written with PostgreSQL's `$n` parameters; the
//! SQLite backend binds them as `?n` (see [`for_sqlite`]), so one behaviour has one text.

use super::query::COLUMNS;

/// Inserts a verdict unless its key exists; returns the new cursor only when it inserted.
/// SQLite assigns `seq` itself; PostgreSQL passes it as `$19` (see the PostgreSQL backend).
pub const INSERT_COLUMNS: &str = "station_id, inspection_id, line, lot_id, panel_id, \
     unit_position, recipe, label, is_defect, confidence, model, model_version, image_sha256, \
     note, received_at_ms, stored_at_ms, verdict, bytes";

/// Keeps one image with its verdict.
pub const INSERT_IMAGE: &str =
    "INSERT INTO retained_images (seq, image, bytes) VALUES ($1, $2, $3)";

/// One verdict by key.
pub fn select_by_key() -> String {
    format!("SELECT {COLUMNS} FROM verdicts v WHERE v.station_id = $1 AND v.inspection_id = $2")
}

/// One retained image by its verdict's key.
pub const SELECT_IMAGE: &str = "SELECT r.image FROM retained_images r JOIN verdicts v \
     ON v.seq = r.seq WHERE v.station_id = $1 AND v.inspection_id = $2";

/// Rows and bytes of verdicts.
pub const VERDICT_STATS: &str =
    "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM verdicts";

/// Count and bytes of retained images.
pub const IMAGE_STATS: &str =
    "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM retained_images";

/// Deletes verdicts stored before `$1`.
pub const PRUNE_BY_AGE: &str = "DELETE FROM verdicts WHERE stored_at_ms < $1";

/// Deletes all but the newest `$1` verdicts.
pub const PRUNE_BY_ROWS: &str = "DELETE FROM verdicts WHERE seq <= \
     (SELECT seq FROM verdicts ORDER BY seq DESC LIMIT 1 OFFSET $1)";

/// Deletes images whose verdict is gone.
pub const PRUNE_ORPHAN_IMAGES: &str =
    "DELETE FROM retained_images WHERE seq NOT IN (SELECT seq FROM verdicts)";

/// Deletes the oldest images beyond `$1` bytes in all.
pub const PRUNE_IMAGES_BY_BYTES: &str = "DELETE FROM retained_images WHERE seq IN (\
     SELECT seq FROM (SELECT seq, CAST(SUM(bytes) OVER (ORDER BY seq DESC) AS BIGINT) AS total \
     FROM retained_images) newest WHERE total > $1)";

/// A consumer's saved cursor.
pub const SELECT_CONSUMER_CURSOR: &str = "SELECT cursor FROM consumer_cursors WHERE name = $1";

/// Saves a consumer's cursor.
pub const SAVE_CONSUMER_CURSOR: &str = "INSERT INTO consumer_cursors (name, cursor) \
     VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor";

/// Takes the lease `$1` for holder `$2` until `$3` if it is free, expired (before `$4`) or
/// already theirs; changes one row exactly when the holder has it.
pub const ACQUIRE_LEASE: &str = "INSERT INTO consumer_cursors (name, holder, lease_until_ms) \
     VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
     SET holder = excluded.holder, lease_until_ms = excluded.lease_until_ms \
     WHERE consumer_cursors.holder IS NULL OR consumer_cursors.holder = excluded.holder \
     OR consumer_cursors.lease_until_ms < $4";

/// The same statement with SQLite's numbered parameters.
pub fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}
