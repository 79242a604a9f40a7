//! Every verdict the inspector produces, broadcast live to whoever listens (gRPC
//! `WatchVerdicts`, for MES).
//!
//! This is not a store: a listener sees only the verdicts produced while it listens, and one
//! that reads too slowly misses the oldest ones (the receiver learns how many). A durable verdict
//! store with resumable cursors is a later issue.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::verdict::Verdict;

/// How many verdicts a slow listener may fall behind before it misses some.
const BACKLOG: usize = 1024;

/// One published verdict with its place in this process's sequence of verdicts.
#[derive(Debug, Clone)]
pub struct VerdictEvent {
    /// Position among every verdict of this process, from 0; not durable across restarts.
    pub sequence: u64,
    /// The verdict as the station received it.
    pub verdict: Arc<Verdict>,
}

/// The broadcast of live verdicts.
pub struct VerdictFeed {
    sender: broadcast::Sender<VerdictEvent>,
    /// The next sequence number; held while sending so events go out in sequence order.
    next: Mutex<u64>,
}

impl Default for VerdictFeed {
    fn default() -> Self {
        VerdictFeed {
            sender: broadcast::channel(BACKLOG).0,
            next: Mutex::new(0),
        }
    }
}

impl VerdictFeed {
    /// Numbers a verdict and sends it to every listener; copies it only when someone listens.
    pub fn publish(&self, verdict: &Verdict) {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sequence = *next;
        *next += 1;
        if self.sender.receiver_count() > 0 {
            let event = VerdictEvent {
                sequence,
                verdict: Arc::new(verdict.clone()),
            };
            // Only fails when every listener left in the meantime, which is fine.
            let _ = self.sender.send(event);
        }
    }

    /// Listens from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<VerdictEvent> {
        self.sender.subscribe()
    }
}
