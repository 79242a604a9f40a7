//! Statements both backends run unchanged, written with PostgreSQL's `$n` parameters; the
//! SQLite backend binds them as `?n` (see [`for_sqlite`]), so one behaviour has one text.

use std::borrow::Cow;

use super::dialect::Dialect;
use super::query::{COLUMNS, Param};
use super::record::NewVerdict;
use super::to_sql_int;

/// The columns of a verdict row besides `seq`, in the order of [`insert_params`].
const INSERT_COLUMNS: [&str; 19] = [
    "station_id",
    "inspection_id",
    "line",
    "lot_id",
    "panel_id",
    "unit_position",
    "recipe",
    "label",
    "is_defect",
    "confidence",
    "model",
    "model_version",
    "image_sha256",
    "note",
    "received_at_ms",
    "stored_at_ms",
    "verdict",
    "bytes",
    "disposition",
];

/// Inserts a verdict unless its key exists; returns `seq` only when it inserted. SQLite
/// assigns `seq` itself; PostgreSQL passes it as one more parameter (`with_seq`), see the
/// PostgreSQL backend for why.
pub fn insert_verdict(dialect: Dialect, with_seq: bool) -> String {
    let mut columns = INSERT_COLUMNS.to_vec();
    if with_seq {
        columns.push("seq");
    }
    let marks: Vec<String> = (1..=columns.len()).map(|n| dialect.mark(n)).collect();
    format!(
        "INSERT INTO verdicts ({}) VALUES ({}) \
         ON CONFLICT (station_id, inspection_id) DO NOTHING RETURNING seq",
        columns.join(", "),
        marks.join(", ")
    )
}

/// The values of [`insert_verdict`]'s columns for one verdict (`json` is its stored form).
pub fn insert_params<'a>(new: &'a NewVerdict, json: &'a str, stored_at_ms: i64) -> Vec<Param<'a>> {
    let v = &new.verdict;
    let bytes = (json.len() + new.note.len()) as u64;
    vec![
        Param::Text(Cow::Borrowed(&v.station_id)),
        Param::Text(Cow::Borrowed(&v.inspection_id)),
        Param::MaybeText(new.field("line")),
        Param::MaybeText(new.field("lot_id")),
        Param::MaybeText(new.panel_id()),
        Param::MaybeText(new.field("unit_position")),
        Param::MaybeText(new.field("recipe")),
        Param::Text(Cow::Borrowed(&v.label)),
        Param::Bool(v.is_defect),
        Param::Float(f64::from(v.confidence)),
        Param::Text(Cow::Borrowed(&v.model)),
        Param::Int(to_sql_int(v.model_version)),
        Param::Text(Cow::Borrowed(&new.image_sha256)),
        Param::Text(Cow::Borrowed(&new.note)),
        Param::Int(v.received_at.timestamp_millis()),
        Param::Int(stored_at_ms),
        Param::Text(Cow::Borrowed(json)),
        Param::Int(to_sql_int(bytes)),
        Param::MaybeText(v.disposition.map(|d| d.as_str())),
    ]
}

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
