//! PostgreSQL's [`StationActivity`]: two read-only queries on a pooled connection.

use super::{PostgresStore, corrupt, raw_row, unavailable};
use crate::store::activity::{self, ActivityCount, StationActivity};
use crate::store::record::decode;
use crate::store::{StoreError, StoredVerdict, to_sql_int};

#[async_trait::async_trait]
impl StationActivity for PostgresStore {
    async fn activity(
        &self,
        since_ms: i64,
        bucket_ms: i64,
        up_to: u64,
    ) -> Result<Vec<ActivityCount>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                activity::ACTIVITY,
                &[&since_ms, &bucket_ms.max(1), &to_sql_int(up_to)],
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let disposition: Option<String> = row.try_get(2).map_err(corrupt)?;
                Ok(ActivityCount {
                    station_id: row.try_get(0).map_err(corrupt)?,
                    bucket: row.try_get::<_, i64>(1).map_err(corrupt)?.unsigned_abs(),
                    disposition: activity::disposition(disposition.as_deref())?,
                    is_defect: row.try_get(3).map_err(corrupt)?,
                    count: row.try_get::<_, i64>(4).map_err(corrupt)?.unsigned_abs(),
                })
            })
            .collect()
    }

    async fn latest_per_station(&self, up_to: u64) -> Result<Vec<StoredVerdict>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(&activity::latest_per_station(), &[&to_sql_int(up_to)])
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| raw_row(row).and_then(decode))
            .collect()
    }
}
