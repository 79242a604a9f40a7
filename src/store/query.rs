//! Which verdicts a reader wants, and the two ways a backend answers it: as SQL (both SQL
//! backends share one text; they differ only in how parameters are numbered) or as a test on a
//! verdict held in memory. Both are written here, side by side, so they cannot drift apart.

use std::borrow::Cow;

use super::dialect::Dialect;
use super::record::StoredVerdict;
use crate::decision::Disposition;

/// Which verdicts to read: after a cursor, at most a limit, through the filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerdictQuery {
    /// Only verdicts with a cursor above this one (0: from the start).
    pub after: u64,
    /// At most this many.
    pub limit: usize,
    /// Which verdicts count.
    pub filters: Filters,
}

/// What a reader filters on (every read path offers the same ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only this station's verdicts.
    pub station: Option<String>,
    /// Only this line's (the `line` metadata field).
    pub line: Option<String>,
    /// Only this lot's (the `lot_id` metadata field).
    pub lot: Option<String>,
    /// Only this predicted label.
    pub label: Option<String>,
    /// Only this model's.
    pub model: Option<String>,
    /// Only defects.
    pub defect_only: bool,
    /// Only units with this disposition (pass, fail, review).
    pub disposition: Option<Disposition>,
    /// Only reviewed units (true) or only units no one has reviewed yet (false).
    pub reviewed: Option<bool>,
}

/// Most verdicts one read returns.
pub const MAX_LIMIT: usize = 1000;
/// Verdicts per read when the reader names no limit.
pub const DEFAULT_LIMIT: usize = 100;

impl Filters {
    /// The query for these filters after `after`, at most `limit` (default [`DEFAULT_LIMIT`])
    /// per read. An empty string means "any" (gRPC's unset strings, an empty query parameter).
    pub fn after(self, after: u64, limit: Option<usize>) -> VerdictQuery {
        let given = |value: Option<String>| value.filter(|v| !v.is_empty());
        VerdictQuery {
            after,
            limit: limit.unwrap_or(DEFAULT_LIMIT),
            filters: Filters {
                station: given(self.station),
                line: given(self.line),
                lot: given(self.lot),
                label: given(self.label),
                model: given(self.model),
                defect_only: self.defect_only,
                disposition: self.disposition,
                reviewed: self.reviewed,
            },
        }
    }
}

/// A statement parameter, typed so each backend binds it natively (see the `ToSql` impls in
/// the backends).
#[derive(Debug, Clone, PartialEq)]
pub enum Param<'a> {
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Text(Cow<'a, str>),
    /// Text or NULL.
    MaybeText(Option<&'a str>),
}

/// The columns every read selects, in the order the backends decode them: the verdict, whether
/// its image is kept, and its newest review (`seq` and JSON; NULL when it has none).
pub const COLUMNS: &str = "v.seq, v.stored_at_ms, v.image_sha256, v.note, v.verdict, \
     EXISTS (SELECT 1 FROM retained_images r WHERE r.seq = v.seq), \
     (SELECT MAX(w.seq) FROM reviews w WHERE w.verdict_seq = v.seq), \
     (SELECT w.review FROM reviews w WHERE w.verdict_seq = v.seq ORDER BY w.seq DESC LIMIT 1)";

impl VerdictQuery {
    /// The metadata-backed filters with the column each one reads.
    fn text_filters(&self) -> [(&'static str, &Option<String>); 5] {
        let f = &self.filters;
        [
            ("station_id", &f.station),
            ("line", &f.line),
            ("lot_id", &f.lot),
            ("label", &f.label),
            ("model", &f.model),
        ]
    }

    /// The limit actually applied: at least 1, at most [`MAX_LIMIT`].
    pub fn effective_limit(&self) -> usize {
        self.limit.clamp(1, MAX_LIMIT)
    }

    /// The SQL and its parameters.
    pub fn to_sql(&self, dialect: Dialect) -> (String, Vec<Param<'static>>) {
        let mut params = vec![Param::Int(super::to_sql_int(self.after))];
        let mut sql = format!(
            "SELECT {COLUMNS} FROM verdicts v WHERE v.seq > {}",
            dialect.mark(1)
        );
        for (column, value) in self.text_filters() {
            if let Some(value) = value {
                params.push(Param::Text(Cow::Owned(value.clone())));
                sql.push_str(&format!(" AND v.{column} = {}", dialect.mark(params.len())));
            }
        }
        if self.filters.defect_only {
            sql.push_str(" AND v.is_defect");
        }
        if let Some(disposition) = self.filters.disposition {
            params.push(Param::Text(Cow::Borrowed(disposition.as_str())));
            sql.push_str(&format!(
                " AND v.disposition = {}",
                dialect.mark(params.len())
            ));
        }
        if let Some(reviewed) = self.filters.reviewed {
            let not = if reviewed { "" } else { "NOT " };
            sql.push_str(&format!(
                " AND {not}EXISTS (SELECT 1 FROM reviews w WHERE w.verdict_seq = v.seq)"
            ));
        }
        sql.push_str(&format!(" ORDER BY v.seq LIMIT {}", self.effective_limit()));
        (sql, params)
    }

    /// Whether a stored verdict passes the filters (the cursor and limit aside): the same test
    /// as [`VerdictQuery::to_sql`]'s `WHERE`, for verdicts held in memory.
    pub fn matches(&self, stored: &StoredVerdict) -> bool {
        let verdict = &stored.verdict;
        let field = |column: &str| -> Option<&str> {
            match column {
                "station_id" => Some(&verdict.station_id),
                "label" => Some(&verdict.label),
                "model" => Some(&verdict.model),
                key => verdict.metadata.get(key).map(String::as_str),
            }
        };
        (!self.filters.defect_only || verdict.is_defect)
            && self
                .filters
                .disposition
                .is_none_or(|d| verdict.disposition == Some(d))
            && self
                .filters
                .reviewed
                .is_none_or(|reviewed| stored.review.is_some() == reviewed)
            && self
                .text_filters()
                .iter()
                .all(|(column, wanted)| wanted.as_deref().is_none_or(|w| field(column) == Some(w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_numbered_parameters() {
        let filters = Filters {
            line: Some("L3".into()),
            label: Some("void".into()),
            station: Some(String::new()),
            defect_only: true,
            ..Filters::default()
        };
        let query = filters.after(7, Some(5000));
        let (sql, params) = query.to_sql(Dialect::Postgres);
        assert!(sql.contains("v.seq > $1 AND v.line = $2 AND v.label = $3 AND v.is_defect"));
        assert!(sql.ends_with("ORDER BY v.seq LIMIT 1000"), "{sql}");
        assert_eq!(
            params,
            vec![
                Param::Int(7),
                Param::Text("L3".into()),
                Param::Text("void".into())
            ]
        );
        let (sql, _) = query.to_sql(Dialect::Sqlite);
        assert!(sql.contains("v.line = ?2"));
    }
}
