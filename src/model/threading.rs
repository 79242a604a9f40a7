//! How many batches run at once and how many threads each may use, chosen from the machine.
//!
//! ONNX Runtime's own default gives every session an intra-op pool as wide as the machine,
//! spin-waiting between operators. A server holds several sessions (three graphs per set, one
//! set per batch in flight) beside its HTTP and preprocessing threads, so those pools fight each
//! other and the rest of the process. kensa instead splits the cores: `sessions` session sets
//! (batches in flight, like Triton's `instance_group`), each with `intra_threads` threads, so
//! that sessions × threads ≤ cores, and no spinning unless asked for.

use serde::Serialize;

use super::runtime::Provider;

/// Session sets used on a GPU when the operator names none: one batch computes while the next
/// is copied in.
const GPU_SESSIONS: usize = 2;

/// The threading a model version runs with, reported at start and by `/v1/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThreadingPlan {
    /// Cores this process may run on (its CPU affinity).
    pub cores: usize,
    /// Session sets: batches that run at once.
    pub sessions: usize,
    /// Threads each session may use inside one operator.
    pub intra_threads: usize,
    /// Whether ONNX Runtime's threads spin while waiting for work.
    pub spinning: bool,
    /// Whether the vision and text encoders of one batch run on two threads at once (only when
    /// cores are left over, or on a GPU where their kernels overlap).
    pub parallel_encoders: bool,
    /// True when kensa chose `sessions` and `intra_threads`; false when both were given.
    pub automatic: bool,
}

/// What the operator asked for; `None` and `0` leave the choice to kensa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadingRequest {
    /// `--sessions`, when given.
    pub sessions: Option<usize>,
    /// `--intra-threads`; 0 when not given.
    pub intra_threads: usize,
    /// `--ort-spin`.
    pub spinning: bool,
}

impl ThreadingRequest {
    /// Threads per session: as asked, else the cores shared among the sessions asked for, else
    /// one (on a small model more threads per operator cost more than they give; several
    /// sessions of one thread keep every core busy instead).
    pub fn intra_threads(&self, cores: usize) -> usize {
        match (self.intra_threads, self.sessions) {
            (0, Some(sessions)) => (cores / sessions.max(1)).max(1),
            (0, None) => 1,
            (threads, _) => threads,
        }
    }

    /// The full plan once the execution provider is known.
    pub fn plan(&self, cores: usize, provider: Provider) -> ThreadingPlan {
        let cores = cores.max(1);
        let intra_threads = self.intra_threads(cores);
        let sessions = self.sessions.unwrap_or(match provider {
            Provider::Cpu => (cores / intra_threads).max(1),
            Provider::Cuda | Provider::Tensorrt => GPU_SESSIONS,
        });
        let parallel_encoders = match provider {
            Provider::Cpu => sessions * intra_threads * 2 <= cores,
            Provider::Cuda | Provider::Tensorrt => true,
        };
        ThreadingPlan {
            cores,
            sessions: sessions.max(1),
            intra_threads,
            spinning: self.spinning,
            parallel_encoders,
            automatic: self.sessions.is_none() || self.intra_threads == 0,
        }
    }
}

/// Cores this process may use: its affinity mask (`taskset`) and CPU quota, as the standard
/// library reads them; 1 when unknown.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sessions: Option<usize>, intra_threads: usize) -> ThreadingRequest {
        ThreadingRequest {
            sessions,
            intra_threads,
            spinning: false,
        }
    }

    #[test]
    fn by_default_every_core_runs_its_own_single_threaded_batch() {
        for cores in [1, 2, 16] {
            let plan = request(None, 0).plan(cores, Provider::Cpu);
            assert_eq!((plan.sessions, plan.intra_threads), (cores, 1));
            assert!(!plan.parallel_encoders, "no core is left over");
            assert!(plan.automatic && !plan.spinning);
        }
    }

    #[test]
    fn a_given_count_shares_the_cores_and_never_oversubscribes() {
        let plan = request(Some(2), 0).plan(16, Provider::Cpu);
        assert_eq!((plan.sessions, plan.intra_threads), (2, 8));
        let plan = request(None, 4).plan(16, Provider::Cpu);
        assert_eq!((plan.sessions, plan.intra_threads), (4, 4));
        let plan = request(Some(3), 0).plan(2, Provider::Cpu);
        assert_eq!((plan.sessions, plan.intra_threads), (3, 1));
    }

    #[test]
    fn both_given_is_manual_and_spare_cores_run_the_encoders_side_by_side() {
        let plan = request(Some(1), 1).plan(4, Provider::Cpu);
        assert!(!plan.automatic);
        assert!(plan.parallel_encoders);
    }

    #[test]
    fn a_gpu_gets_two_session_sets_with_overlapping_encoders() {
        let plan = request(None, 0).plan(16, Provider::Tensorrt);
        assert_eq!(plan.sessions, GPU_SESSIONS);
        assert!(plan.parallel_encoders);
    }
}
