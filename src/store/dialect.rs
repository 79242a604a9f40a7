//! The one difference between the SQL backends' statements that is not a statement: how a
//! parameter is written. Its own module, so every statement builder can use it without
//! importing another.

/// How a backend writes the n-th (1-based) parameter.
#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    /// `?1`, `?2`, ...
    Sqlite,
    /// `$1`, `$2`, ...
    Postgres,
}

impl Dialect {
    /// The placeholder of the n-th parameter.
    pub fn mark(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }
}
