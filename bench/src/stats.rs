//! What a phase cost the server: CPU time, memory and the mean time of every stage, read from
//! the server's own `/metrics` (or, for a server without them, from `/proc/<pid>`) before and
//! after the phase; and the machine's load average, so a noisy run shows as noisy.

use std::collections::HashMap;

/// Stages in the order a request meets them, with the metric and label that time them, and
/// whether the figure is per request or per batch.
const STAGES: [(&str, &str, &str); 12] = [
    ("parse", "kensa_stage_duration_seconds", "stage=\"parse\""),
    ("preprocess", "kensa_preprocess_duration_seconds", ""),
    ("decode", "kensa_stage_duration_seconds", "stage=\"decode\""),
    ("resize", "kensa_stage_duration_seconds", "stage=\"resize\""),
    (
        "tokenize",
        "kensa_stage_duration_seconds",
        "stage=\"tokenize\"",
    ),
    ("queue", "kensa_queue_duration_seconds", ""),
    (
        "vision/batch",
        "kensa_stage_duration_seconds",
        "stage=\"vision\"",
    ),
    (
        "text/batch",
        "kensa_stage_duration_seconds",
        "stage=\"text\"",
    ),
    (
        "head/batch",
        "kensa_stage_duration_seconds",
        "stage=\"head\"",
    ),
    ("batch", "kensa_inference_duration_seconds", ""),
    ("store", "kensa_store_write_duration_seconds", ""),
    (
        "respond",
        "kensa_stage_duration_seconds",
        "stage=\"respond\"",
    ),
];

/// One reading of the server's counters.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Process CPU seconds (user + system).
    pub cpu_seconds: Option<f64>,
    /// Resident memory in MiB.
    pub rss_mib: Option<f64>,
    /// Per stage: (sum of seconds, count).
    stages: Vec<(f64, f64)>,
    /// Batch-size histogram: (sum of sizes, batches).
    batches: (f64, f64),
}

/// Where a server's figures come from: its `/metrics` (kensa's stages, CPU and memory, where
/// the server has them) and, for a server without kensa's metrics, `/proc/<pid>` and its
/// direct children for CPU and memory.
#[derive(Debug, Clone)]
pub struct Source {
    /// The server's base URL.
    pub url: String,
    /// Its process, when CPU and memory are to be read from /proc.
    pub pid: Option<u32>,
}

impl Source {
    /// Reads the figures now.
    pub async fn snapshot(&self, client: &reqwest::Client) -> Snapshot {
        let text = match client.get(format!("{}/metrics", self.url)).send().await {
            Ok(response) if response.status().is_success() => {
                response.text().await.unwrap_or_default()
            }
            _ => String::new(),
        };
        let mut snapshot = parse_metrics(&text);
        if let Some(pid) = self.pid {
            snapshot.cpu_seconds = process_tree_cpu_seconds(pid);
            snapshot.rss_mib = process_tree_rss_mib(pid);
        }
        snapshot
    }
}

/// What one phase cost, from two snapshots.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    /// Server CPU milliseconds per answered request.
    pub cpu_ms_per_request: Option<f64>,
    /// Cores the server kept busy on average.
    pub cores: Option<f64>,
    /// Resident memory at the end.
    pub rss_mib: Option<f64>,
    /// Mean requests per batch.
    pub mean_batch: Option<f64>,
    /// Mean milliseconds of each stage that ran, in request order.
    pub stages: Vec<(&'static str, f64)>,
}

impl Cost {
    /// The cost of `requests` answered in `seconds` between `before` and `after`.
    pub fn between(before: &Snapshot, after: &Snapshot, requests: usize, seconds: f64) -> Cost {
        let cpu = match (before.cpu_seconds, after.cpu_seconds) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let stages = STAGES
            .iter()
            .enumerate()
            .filter_map(|(i, (name, _, _))| {
                let (sum0, count0) = before.stages.get(i).copied().unwrap_or_default();
                let (sum1, count1) = after.stages.get(i).copied()?;
                let count = count1 - count0;
                (count > 0.0).then(|| (*name, 1000.0 * (sum1 - sum0) / count))
            })
            .collect();
        let batches = after.batches.1 - before.batches.1;
        Cost {
            cpu_ms_per_request: cpu
                .filter(|_| requests > 0)
                .map(|c| 1000.0 * c / requests as f64),
            cores: cpu.map(|c| c / seconds.max(1e-9)),
            rss_mib: after.rss_mib,
            mean_batch: (batches > 0.0).then(|| (after.batches.0 - before.batches.0) / batches),
            stages,
        }
    }

    /// `stage 0.12, stage 0.40, ...` in milliseconds.
    pub fn stage_line(&self) -> String {
        self.stages
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn parse_metrics(text: &str) -> Snapshot {
    let mut values: HashMap<&str, f64> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((series, value)) = line.rsplit_once(' ')
            && let Ok(value) = value.parse::<f64>()
        {
            values.insert(series, value);
        }
    }
    let total = |name: &str, label: &str| -> f64 {
        values
            .iter()
            .filter(|(series, _)| {
                let metric = series.split('{').next().unwrap_or(series);
                metric == name && series.contains(label)
            })
            .map(|(_, v)| v)
            .sum()
    };
    let stages = STAGES
        .iter()
        .map(|(_, metric, label)| {
            (
                total(&format!("{metric}_sum"), label),
                total(&format!("{metric}_count"), label),
            )
        })
        .collect();
    Snapshot {
        cpu_seconds: values.get("process_cpu_seconds_total").copied(),
        rss_mib: values
            .get("process_resident_memory_bytes")
            .map(|b| b / (1024.0 * 1024.0)),
        stages,
        batches: (
            total("kensa_batch_size_sum", ""),
            total("kensa_batch_size_count", ""),
        ),
    }
}

/// Linux reports process times in 1/100 s.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of a process (`/proc/<pid>/stat`).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// CPU seconds of a process and its direct children (a server with worker processes).
fn process_tree_cpu_seconds(pid: u32) -> Option<f64> {
    Some(process_cpu_seconds(pid)? + children(pid).filter_map(process_cpu_seconds).sum::<f64>())
}

/// Resident memory of a process and its direct children, in MiB.
fn process_tree_rss_mib(pid: u32) -> Option<f64> {
    Some(process_rss_mib(pid)? + children(pid).filter_map(process_rss_mib).sum::<f64>())
}

/// The direct children of a process.
fn children(pid: u32) -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |&child| parent_of(child) == Some(pid))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn process_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The machine's 1-minute load average and its cores, as `load 2.31 on 2 cores`.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("load {load} on {cores} cores")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_means_come_from_sums_and_counts() {
        let before = parse_metrics(
            "kensa_stage_duration_seconds_sum{model=\"m\",version=\"1\",stage=\"decode\"} 1.0\n\
             kensa_stage_duration_seconds_count{model=\"m\",version=\"1\",stage=\"decode\"} 10\n\
             process_cpu_seconds_total 5.0\n",
        );
        let after = parse_metrics(
            "kensa_stage_duration_seconds_sum{model=\"m\",version=\"1\",stage=\"decode\"} 1.5\n\
             kensa_stage_duration_seconds_count{model=\"m\",version=\"1\",stage=\"decode\"} 20\n\
             process_cpu_seconds_total 6.0\n",
        );
        let cost = Cost::between(&before, &after, 10, 2.0);
        assert_eq!(cost.stages, vec![("decode", 50.0)]);
        assert_eq!(cost.cpu_ms_per_request, Some(100.0));
        assert_eq!(cost.cores, Some(0.5));
    }

    #[test]
    fn this_process_has_cpu_time() {
        assert!(process_cpu_seconds(std::process::id()).is_some());
    }
}
