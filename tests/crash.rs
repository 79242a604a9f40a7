//! The crash test: `kill -9` the real `kensa serve` process while submissions are in flight and
//! a MES consumer is reading. After a restart on the same data folder every inspection that was
//! answered 200 is stored with the verdict that was answered, nothing is stored twice, the MES
//! consumer resumes from its last cursor without gaps or repeats, and retrying every
//! submission leaves exactly one verdict per unit.

mod common;
mod proxy;
mod store_support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::samples;
use kensa::store::StoredVerdict;
use kensa::verdict::Verdict;
use serde_json::Value;

/// Submissions in flight around the kill.
const K: usize = 96;

/// A `kensa serve` child process.
struct Kensa {
    child: Child,
    base: String,
}

impl Kensa {
    fn start(data: &Path) -> Kensa {
        Kensa::start_with(data, &[])
    }

    /// Starts `kensa serve` on `data` with `extra` flags.
    fn start_with(data: &Path, extra: &[String]) -> Kensa {
        let http = common::free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("kensa.log"))
            .unwrap();
        let child = common::kensa_serve(http, data)
            .arg("--max-queue-delay=5ms")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kensa starts");
        Kensa {
            child,
            base: format!("http://127.0.0.1:{http}"),
        }
    }

    async fn ready(&mut self, client: &reqwest::Client) {
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.base)).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "kensa exited; see kensa.log in the data folder"
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "kensa never got ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no drain, no flush, no goodbye.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Kensa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn submit(
    client: &reqwest::Client,
    base: &str,
    i: usize,
) -> reqwest::Result<reqwest::Response> {
    let samples = samples();
    let sample = &samples[i % samples.len()];
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(sample.image.clone()).file_name("unit.png"),
        )
        .text("note", sample.note.clone())
        .text("station_id", "aoi-crash")
        .text("inspection_id", format!("unit-{i}"));
    client
        .post(format!("{base}/v1/inspections"))
        .multipart(form)
        .send()
        .await
}

async fn read_all(client: &reqwest::Client, base: &str, since: u64) -> Vec<StoredVerdict> {
    let body: Value = client
        .get(format!("{base}/v1/verdicts?since={since}&limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    serde_json::from_value(body["verdicts"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_verdict_and_duplicates_none() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut kensa = Kensa::start(data.path());
    kensa.ready(&client).await;
    let base = kensa.base.clone();

    // A MES consumer: processes whole pages, then moves its cursor past them.
    let consumed = Arc::new(Mutex::new((0u64, Vec::<StoredVerdict>::new())));
    let consumer = {
        let (client, base, consumed) = (client.clone(), base.clone(), Arc::clone(&consumed));
        tokio::spawn(async move {
            loop {
                let since = consumed.lock().unwrap().0;
                let url = format!("{base}/v1/verdicts?since={since}&wait=1s&limit=7");
                let Ok(response) = client.get(url).send().await else {
                    return;
                };
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                let page: Vec<StoredVerdict> =
                    serde_json::from_value(body["verdicts"].clone()).unwrap();
                let mut state = consumed.lock().unwrap();
                state.0 = body["next_cursor"].as_u64().unwrap();
                state.1.extend(page);
            }
        })
    };

    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let submissions: Vec<_> = (0..K)
        .map(|i| {
            let (client, base, answered_tx) = (client.clone(), base.clone(), answered_tx.clone());
            tokio::spawn(async move {
                let response = submit(&client, &base, i).await.ok()?;
                if response.status() != 200 {
                    return None;
                }
                let verdict: Verdict = response.json().await.ok()?;
                let _ = answered_tx.send(());
                Some((format!("unit-{i}"), verdict))
            })
        })
        .collect();
    for _ in 0..K / 8 {
        answered.recv().await.unwrap();
    }
    kensa.kill_9();
    let mut acknowledged = BTreeMap::new();
    for submission in submissions {
        if let Some((id, verdict)) = submission.await.unwrap() {
            acknowledged.insert(id, verdict);
        }
    }
    consumer.await.unwrap();
    assert!(acknowledged.len() >= K / 8);
    assert!(
        acknowledged.len() < K,
        "the kill should catch some submissions in flight"
    );

    let mut kensa = Kensa::start(data.path());
    kensa.ready(&client).await;
    let base = kensa.base.clone();
    let stored = read_all(&client, &base, 0).await;
    let keys: Vec<&str> = stored
        .iter()
        .map(|v| v.verdict.inspection_id.as_str())
        .collect();
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        keys.len(),
        "a unit stored twice: {keys:?}"
    );
    assert!(stored.windows(2).all(|w| w[0].cursor < w[1].cursor));
    for (id, verdict) in &acknowledged {
        let found = stored
            .iter()
            .find(|v| &v.verdict.inspection_id == id)
            .unwrap_or_else(|| panic!("{id} was answered 200 but is not stored"));
        assert_eq!(
            &found.verdict, verdict,
            "{id}: the stored verdict is the answered one"
        );
    }

    eprintln!(
        "{K} submitted, {} answered 200 before the kill, {} stored after the restart",
        acknowledged.len(),
        stored.len()
    );
    let (cursor, before) = {
        let state = consumed.lock().unwrap();
        (state.0, state.1.clone())
    };
    let after = read_all(&client, &base, cursor).await;
    let resumed: Vec<_> = before.iter().chain(&after).cloned().collect();
    assert_eq!(
        resumed, stored,
        "the consumer resumes with no gap and no repeat"
    );

    for i in 0..K {
        let response = submit(&client, &base, i).await.unwrap();
        assert_eq!(response.status(), 200);
        let id = format!("unit-{i}");
        let replayed = response.headers().get("x-kensa-replayed").is_some();
        let verdict: Verdict = response.json().await.unwrap();
        if let Some(answered) = acknowledged.get(&id) {
            assert!(replayed, "{id} must be answered from the store");
            assert_eq!(&verdict, answered);
        }
    }
    let all = read_all(&client, &base, 0).await;
    assert_eq!(all.len(), K, "exactly one verdict per unit");
}

/// The store down for a while (PostgreSQL behind a proxy the test cuts) and `kill -9` during
/// the outage: inspections during it get 503 and nothing is acknowledged that is not stored;
/// after the restart every unit answered 200 is stored as answered, and retrying every unit
/// leaves exactly one verdict each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_and_a_kill_9_during_it_lose_no_acknowledged_verdict() {
    let fixture = store_support::postgres().await;
    let kensa::store::StoreLocation::Postgres(url) = &fixture.location else {
        unreachable!()
    };
    let target: tokio_postgres::Config = url.parse().unwrap();
    let (tokio_postgres::config::Host::Tcp(host), Some(port)) =
        (&target.get_hosts()[0], target.get_ports().first())
    else {
        panic!("KENSA_TEST_POSTGRES must be a TCP address");
    };
    let address = tokio::net::lookup_host((host.as_str(), *port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = proxy::Proxy::start(address).await;
    let proxied = url.replacen(
        &format!("{host}:{port}"),
        &format!("127.0.0.1:{}", proxy.port),
        1,
    );
    assert_ne!(&proxied, url, "the store URL names host:port");
    let flags = [
        format!("--store={proxied}"),
        "--store-timeout=1s".to_string(),
    ];
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut kensa = Kensa::start_with(data.path(), &flags);
    kensa.ready(&client).await;
    let base = kensa.base.clone();

    let mut acknowledged = BTreeMap::new();
    let mut answer = |i: usize, status: u16, verdict: Option<Verdict>| {
        if let Some(verdict) = verdict {
            acknowledged.insert(format!("unit-{i}"), verdict);
        }
        status
    };
    for i in 0..10 {
        let response = submit(&client, &base, i).await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(answer(i, status, response.json().await.ok()), 200);
    }
    let cut = proxy.cut().await;
    let mut refused = 0;
    for i in 10..20 {
        let response = submit(&client, &base, i).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 503, "unit-{i} during the outage: {body}");
        assert!(
            ["store_unavailable", "unavailable"].contains(&body["code"].as_str().unwrap()),
            "{body}"
        );
        refused += 1;
    }
    kensa.kill_9();
    let _restored = cut.restore().await;

    let mut kensa = Kensa::start_with(data.path(), &flags);
    kensa.ready(&client).await;
    let base = kensa.base.clone();
    let stored = read_all(&client, &base, 0).await;
    for (id, verdict) in &acknowledged {
        let found = stored
            .iter()
            .find(|v| &v.verdict.inspection_id == id)
            .unwrap_or_else(|| panic!("{id} was answered 200 but is not stored"));
        assert_eq!(&found.verdict, verdict);
    }
    for i in 0..20 {
        assert_eq!(submit(&client, &base, i).await.unwrap().status(), 200);
    }
    let all = read_all(&client, &base, 0).await;
    assert_eq!(all.len(), 20, "exactly one verdict per unit");
    eprintln!(
        "{} acknowledged before the outage, {refused} refused with 503 during it",
        acknowledged.len()
    );
}

/// SIGHUP reloads (the client file, certificates and the model repository) and never ends the
/// process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_never_kills() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut kensa = Kensa::start(data.path());
    kensa.ready(&client).await;
    for _ in 0..3 {
        let pid = i32::try_from(kensa.child.id()).unwrap();
        // SAFETY: kill only sends a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        kensa.child.try_wait().unwrap().is_none(),
        "SIGHUP ended kensa"
    );
    let response = client
        .get(format!("{}/readyz", kensa.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let log = std::fs::read_to_string(data.path().join("kensa.log")).unwrap();
    assert_eq!(log.matches("SIGHUP: reloading").count(), 3, "{log}");
    assert_eq!(
        log.matches("model repository reloaded").count(),
        3,
        "each SIGHUP reads the model repository again: {log}"
    );
}
