//! Reading stored verdicts: the one service behind every MES read (`/v1/verdicts`, its
//! long-poll and Server-Sent Events, gRPC `GetVerdict` and `WatchVerdicts`).
//!
//! Every read goes to the store in cursor (commit) order, so a consumer that keeps the last
//! cursor it processed and resumes after it misses nothing and sees nothing twice. Adapters
//! only translate their wire format into [`Filters`] and a starting cursor, and the answers back.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::follow::{follow, wait_for};
use crate::store::{SharedStore, StoredVerdict, VerdictQuery};
use crate::text::check_text;

/// Longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

pub use crate::store::Filters;

/// One read: the verdicts and the cursor to pass next time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page {
    /// The verdicts, in cursor order.
    pub verdicts: Vec<StoredVerdict>,
    /// Pass this as the next read's cursor (the last verdict's, or the one asked for).
    pub next_cursor: u64,
}

/// The read service.
#[derive(Clone)]
pub struct Verdicts {
    store: SharedStore,
    shutdown: CancellationToken,
}

impl Verdicts {
    /// Reads `store`; long-polls and streams end when `shutdown` is cancelled (the server
    /// drains), so draining never waits for a reader.
    pub fn new(store: SharedStore, shutdown: CancellationToken) -> Verdicts {
        Verdicts { store, shutdown }
    }

    /// The newest committed cursor: where a reader that wants only new verdicts starts.
    pub fn latest_cursor(&self) -> u64 {
        *self.store.subscribe().borrow()
    }

    /// The stored verdict of one inspection.
    pub async fn get(&self, station_id: &str, inspection_id: &str) -> Result<StoredVerdict, Error> {
        check_key(station_id, inspection_id)?;
        self.store
            .get(station_id, inspection_id)
            .await?
            .ok_or_else(|| Error::VerdictNotFound {
                station_id: station_id.to_string(),
                inspection_id: inspection_id.to_string(),
            })
    }

    /// The retained image of one inspection.
    pub async fn image(&self, station_id: &str, inspection_id: &str) -> Result<Vec<u8>, Error> {
        check_key(station_id, inspection_id)?;
        if let Some(bytes) = self.store.image(station_id, inspection_id).await? {
            return Ok(bytes);
        }
        self.get(station_id, inspection_id).await?;
        Err(Error::ImageNotRetained {
            station_id: station_id.to_string(),
            inspection_id: inspection_id.to_string(),
        })
    }

    /// The verdicts `query` selects; when there are none yet, waits up to `wait` (at most
    /// [`MAX_WAIT`]) for the first ones, or until the server drains.
    pub async fn page(&self, query: &VerdictQuery, wait: Duration) -> Result<Page, Error> {
        check_filters(&query.filters)?;
        let wait = wait.min(MAX_WAIT);
        let verdicts = if wait.is_zero() {
            self.store.list(query).await?
        } else {
            tokio::select! {
                rows = wait_for(&self.store, query, wait) => rows?,
                () = self.shutdown.cancelled() => Vec::new(),
            }
        };
        let next_cursor = verdicts.last().map_or(query.after, |v| v.cursor);
        Ok(Page {
            verdicts,
            next_cursor,
        })
    }

    /// Every verdict `query` selects from its cursor on, then each new one as it commits.
    /// Ends after the first store error, or with [`Error::Unavailable`] when the server drains;
    /// either way the reader resumes after the last cursor it received. Bad filters are refused
    /// before the stream starts.
    pub fn follow(
        &self,
        query: VerdictQuery,
    ) -> Result<impl Stream<Item = Result<StoredVerdict, Error>> + Send + use<>, Error> {
        check_filters(&query.filters)?;
        let shutdown = self.shutdown.clone();
        let stored = follow(self.store.clone(), query)
            .map(|item| item.map_err(Error::from))
            .take_until(shutdown.clone().cancelled_owned());
        let drained = futures::stream::once(async move {
            Err(Error::Unavailable("the server is draining; reconnect"))
        })
        .filter(move |_| std::future::ready(shutdown.is_cancelled()));
        Ok(stored.chain(drained))
    }
}

/// A key to look up: both parts given, no characters the store cannot hold.
fn check_key(station_id: &str, inspection_id: &str) -> Result<(), Error> {
    if station_id.is_empty() || inspection_id.is_empty() {
        return Err(Error::BadRequest(
            "station_id and inspection_id are both required".into(),
        ));
    }
    check_text("station_id", station_id)?;
    check_text("inspection_id", inspection_id)
}

/// Filters compare with stored text, so they follow the same rule as what is stored.
fn check_filters(filters: &Filters) -> Result<(), Error> {
    let named = [
        ("station", &filters.station),
        ("line", &filters.line),
        ("lot", &filters.lot),
        ("label", &filters.label),
        ("model", &filters.model),
    ];
    for (field, value) in named {
        if let Some(value) = value {
            check_text(field, value)?;
        }
    }
    Ok(())
}
