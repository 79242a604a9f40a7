//! Reading the store as it grows: long-poll (`wait`) and an endless stream from a cursor, for
//! the MES API, Server-Sent Events, gRPC `WatchVerdicts` and the MQTT publisher.
//!
//! Both read the store itself, never a live broadcast, so what a consumer receives is exactly
//! the rows after its cursor in commit order: resuming from the last cursor it saw misses
//! nothing and repeats nothing. Wake-ups ([`super::VerdictStore::subscribe`]) only say when to
//! look again; a periodic recheck covers a wake-up that never came.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use tokio::time::Instant;

use super::{SharedStore, StoreError, StoredVerdict, VerdictQuery};

/// Longest a reader waits without looking at the store again.
const RECHECK: Duration = Duration::from_secs(1);
/// Longest one wait of a stream lasts before it simply waits again.
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// The verdicts after `query.after`; when there are none yet, waits up to `wait` for the first
/// ones to be committed.
pub async fn wait_for(
    store: &SharedStore,
    query: &VerdictQuery,
    wait: Duration,
) -> Result<Vec<StoredVerdict>, StoreError> {
    let deadline = Instant::now() + wait;
    let mut changes = store.subscribe();
    loop {
        // Marked seen before reading, so a commit between the read and the wait still wakes us.
        changes.borrow_and_update();
        let rows = store.list(query).await?;
        let now = Instant::now();
        if !rows.is_empty() || now >= deadline {
            return Ok(rows);
        }
        let until = deadline.min(now + RECHECK);
        if let Ok(Err(_)) = tokio::time::timeout_at(until, changes.changed()).await {
            // The store is shutting down; recheck at the usual pace until the deadline.
            tokio::time::sleep_until(until).await;
        }
    }
}

/// Every verdict after `query.after` that matches, in cursor order, forever: first what is
/// stored, then each new one as it commits. Ends after the first error (resume from the last
/// cursor received).
pub fn follow(
    store: SharedStore,
    query: VerdictQuery,
) -> impl Stream<Item = Result<StoredVerdict, StoreError>> + Send + 'static {
    let state = Some((store, query, VecDeque::new()));
    futures::stream::unfold(state, |state| async move {
        let (store, mut query, mut buffered) = state?;
        loop {
            if let Some(next) = buffered.pop_front() {
                return Some((Ok(next), Some((store, query, buffered))));
            }
            match wait_for(&store, &query, STREAM_WAIT).await {
                Ok(rows) => {
                    if let Some(last) = rows.last() {
                        query.after = last.cursor;
                    }
                    buffered.extend(rows);
                }
                Err(error) => return Some((Err(error), None)),
            }
        }
    })
}
