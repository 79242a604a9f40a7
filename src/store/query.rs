//! The MES read: verdicts after a cursor, filtered, in cursor order; written once as SQL for
//! both backends (they differ only in how parameters are numbered).

/// Which verdicts to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerdictQuery {
    /// Only verdicts with a cursor above this one (0: from the start).
    pub after: u64,
    /// At most this many.
    pub limit: usize,
    /// Only this station's.
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
}

/// Most verdicts one read returns.
pub const MAX_LIMIT: usize = 1000;

/// A query parameter, typed so each backend binds it natively.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// An integer.
    Int(i64),
    /// A string.
    Text(String),
}

/// How a backend writes the n-th (1-based) parameter.
#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    /// `?1`, `?2`, ...
    Sqlite,
    /// `$1`, `$2`, ...
    Postgres,
}

/// The columns every read selects, in the order the backends decode them.
pub const COLUMNS: &str = "v.seq, v.stored_at_ms, v.image_sha256, v.note, v.verdict, \
     EXISTS (SELECT 1 FROM retained_images r WHERE r.seq = v.seq)";

impl VerdictQuery {
    /// The SQL and its parameters.
    pub fn to_sql(&self, dialect: Dialect) -> (String, Vec<Param>) {
        let mut params = vec![Param::Int(i64::try_from(self.after).unwrap_or(i64::MAX))];
        let mut sql = format!(
            "SELECT {COLUMNS} FROM verdicts v WHERE v.seq > {}",
            mark(dialect, 1)
        );
        let filters = [
            ("station_id", &self.station),
            ("line", &self.line),
            ("lot_id", &self.lot),
            ("label", &self.label),
            ("model", &self.model),
        ];
        for (column, value) in filters {
            if let Some(value) = value {
                params.push(Param::Text(value.clone()));
                sql.push_str(&format!(
                    " AND v.{column} = {}",
                    mark(dialect, params.len())
                ));
            }
        }
        if self.defect_only {
            sql.push_str(" AND v.is_defect");
        }
        let limit = self.limit.clamp(1, MAX_LIMIT);
        sql.push_str(&format!(" ORDER BY v.seq LIMIT {limit}"));
        (sql, params)
    }
}

fn mark(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => format!("?{n}"),
        Dialect::Postgres => format!("${n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_numbered_parameters() {
        let query = VerdictQuery {
            after: 7,
            limit: 5000,
            line: Some("L3".into()),
            label: Some("void".into()),
            defect_only: true,
            ..VerdictQuery::default()
        };
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
