//! SQLite's [`StationActivity`]: two read-only queries on the blocking pool.

use rusqlite::params;

use super::{SqliteStore, raw_row, unavailable};
use crate::store::activity::{self, ActivityCount, StationActivity};
use crate::store::record::decode;
use crate::store::sql::for_sqlite;
use crate::store::{StoreError, StoredVerdict, to_sql_int};

#[async_trait::async_trait]
impl StationActivity for SqliteStore {
    async fn activity(
        &self,
        since_ms: i64,
        bucket_ms: i64,
        up_to: u64,
    ) -> Result<Vec<ActivityCount>, StoreError> {
        let up_to = to_sql_int(up_to);
        self.read(move |conn| {
            let mut statement = conn
                .prepare_cached(&for_sqlite(activity::ACTIVITY))
                .map_err(unavailable)?;
            let rows = statement
                .query_map(params![since_ms, bucket_ms.max(1), up_to], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, bool>(3)?,
                        row.get::<_, i64>(4)?,
                    ))
                })
                .map_err(unavailable)?;
            rows.map(|row| {
                let (station_id, bucket, disposition, is_defect, count) =
                    row.map_err(unavailable)?;
                Ok(ActivityCount {
                    station_id,
                    bucket: bucket.unsigned_abs(),
                    disposition: activity::disposition(disposition.as_deref())?,
                    is_defect,
                    count: count.unsigned_abs(),
                })
            })
            .collect()
        })
        .await
    }

    async fn latest_per_station(&self, up_to: u64) -> Result<Vec<StoredVerdict>, StoreError> {
        let up_to = to_sql_int(up_to);
        self.read(move |conn| {
            let mut statement = conn
                .prepare_cached(&for_sqlite(&activity::latest_per_station()))
                .map_err(unavailable)?;
            let rows = statement
                .query_map(params![up_to], raw_row)
                .map_err(unavailable)?;
            rows.map(|row| row.map_err(unavailable).and_then(decode))
                .collect()
        })
        .await
    }
}
