//! Versioned schema migrations, one list per backend, applied at start in order, each once.
//!
//! Applied versions are recorded in `schema_migrations`. A database that has a version this
//! build does not know is refused: an older kensa must not write into a newer schema.

use super::StoreError;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Increasing from 1, never reused.
    pub version: i64,
    /// What it does, recorded with the version.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// SQLite's migrations.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "verdicts",
        sql: include_str!("migrations/sqlite/0001_verdicts.sql"),
    },
    Migration {
        version: 2,
        name: "disposition",
        sql: include_str!("migrations/sqlite/0002_disposition.sql"),
    },
    Migration {
        version: 3,
        name: "reviews",
        sql: include_str!("migrations/sqlite/0003_reviews.sql"),
    },
];

/// PostgreSQL's migrations.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "verdicts",
        sql: include_str!("migrations/postgres/0001_verdicts.sql"),
    },
    Migration {
        version: 2,
        name: "disposition",
        sql: include_str!("migrations/postgres/0002_disposition.sql"),
    },
    Migration {
        version: 3,
        name: "reviews",
        sql: include_str!("migrations/postgres/0003_reviews.sql"),
    },
];

/// The table recording applied versions (same SQL for both backends).
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)";

/// The migrations still to apply, given the versions already applied.
pub fn pending(all: &'static [Migration], applied: &[i64]) -> Result<Vec<Migration>, StoreError> {
    let known = all.last().map_or(0, |m| m.version);
    if let Some(newer) = applied.iter().find(|v| **v > known) {
        return Err(StoreError::Schema(format!(
            "the database has schema version {newer}, this kensa knows only up to {known}; \
             run a newer kensa or use another database"
        )));
    }
    Ok(all
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_newer_databases_are_refused() {
        for list in [SQLITE, POSTGRES] {
            assert!(list.windows(2).all(|w| w[0].version < w[1].version));
            assert_eq!(list[0].version, 1);
        }
        assert_eq!(pending(SQLITE, &[]).unwrap().len(), SQLITE.len());
        assert_eq!(pending(SQLITE, &[1]).unwrap()[0].version, 2);
        let all: Vec<i64> = SQLITE.iter().map(|m| m.version).collect();
        assert!(pending(SQLITE, &all).unwrap().is_empty());
        let error = pending(SQLITE, &[1, 99]).unwrap_err();
        assert!(error.to_string().contains("99"), "{error}");
    }
}
