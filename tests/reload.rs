//! Hot model reload through the real server under load: a new version folder is loaded and
//! warmed beside the serving one, then takes new requests; a broken one is reported and changes
//! nothing; a removed one is unloaded; no request fails on the way. Also the repository poll.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestServer, demo_dir, samples};
use serde_json::Value;

/// `<repository>/kensa-demo/<version>/` holding links to the demo model's files.
fn add_version(repository: &Path, version: u64) {
    let dir = repository.join("kensa-demo").join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(demo_dir()).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
    }
}

async fn reload(server: &TestServer) -> Value {
    let response = server
        .client
        .post(server.url("/v1/models/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn versions(report: &Value, field: &str) -> Vec<u64> {
    report[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect()
}

async fn served_versions(server: &TestServer) -> Value {
    let models: Value = server.get_json("/v1/models").await;
    models["models"][0]["versions"].clone()
}

/// Stations sending units back to back until stopped; counts answers by success.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(server: &TestServer, stations: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..stations)
            .map(|station| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let client = server.client.clone();
                let url = server.url("/v1/inspections");
                let sample = samples().remove(station % 2 * 2);
                tokio::spawn(async move {
                    let mut unit = 0;
                    while !stop.load(Ordering::SeqCst) {
                        unit += 1;
                        let form = reqwest::multipart::Form::new()
                            .part(
                                "image",
                                reqwest::multipart::Part::bytes(sample.image.clone())
                                    .file_name("unit.png"),
                            )
                            .text("station_id", format!("aoi-{station}"))
                            .text("inspection_id", format!("u{unit}"))
                            .text("note", sample.note.clone());
                        let response = client.post(&url).multipart(form).send().await.unwrap();
                        let status = response.status();
                        if status == 200 {
                            ok.fetch_add(1, Ordering::SeqCst);
                        } else {
                            let body = response.text().await.unwrap_or_default();
                            failed.lock().unwrap().push(format!("{status}: {body}"));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_come_and_go_under_load_without_a_failed_request() {
    let repository = tempfile::tempdir().unwrap();
    add_version(repository.path(), 1);
    let flag = format!("--model-repository={}", repository.path().display());
    let server = TestServer::start(&[&flag, "--model-poll-interval=0s"]).await;
    let load = Load::start(&server, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new version is loaded beside version 1, then takes the requests that name none.
    add_version(repository.path(), 2);
    let report = reload(&server).await;
    assert_eq!(versions(&report, "loaded"), vec![2], "{report}");
    assert_eq!(versions(&report, "unchanged"), vec![1], "{report}");
    assert_eq!(served_versions(&server).await, serde_json::json!([1, 2]));
    let verdict: Value = server
        .inspect(&samples()[0], &[("inspection_id", "after-2")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verdict["model_version"], 2);

    // A broken version is reported and changes nothing; the same files are not tried again.
    let broken = repository.path().join("kensa-demo/3");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("manifest.json"), "{ not json").unwrap();
    let report = reload(&server).await;
    assert_eq!(versions(&report, "failed"), vec![3], "{report}");
    assert!(versions(&report, "loaded").is_empty(), "{report}");
    assert_eq!(served_versions(&server).await, serde_json::json!([1, 2]));
    let models: Value = server.get_json("/v1/models").await;
    assert_eq!(models["load_failures"][0]["version"], 3, "{models}");
    assert!(
        models["load_failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("manifest"),
        "{models}"
    );
    let failures = r#"kensa_model_load_failures_total{model="kensa-demo",version="3"}"#;
    assert_eq!(server.metric(failures).await, Some(1.0));
    reload(&server).await;
    assert_eq!(server.metric(failures).await, Some(1.0), "not retried");

    // Version 1 leaves; its last requests finish on it.
    std::fs::remove_dir_all(repository.path().join("kensa-demo/1")).unwrap();
    std::fs::remove_dir_all(&broken).unwrap();
    let report = reload(&server).await;
    assert_eq!(versions(&report, "unloaded"), vec![1], "{report}");
    assert_eq!(served_versions(&server).await, serde_json::json!([2]));
    let models: Value = server.get_json("/v1/models").await;
    assert_eq!(models["load_failures"], serde_json::json!([]), "{models}");
    let pinned = server
        .inspect(
            &samples()[0],
            &[("inspection_id", "pinned-1"), ("model_version", "1")],
        )
        .await;
    assert_eq!(pinned.status(), 404, "version 1 is gone");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = load.stop().await;
    assert!(
        failed.is_empty(),
        "requests failed during reloads: {failed:?}"
    );
    assert!(ok >= 10, "only {ok} requests were answered under load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_poll_finds_a_new_version_and_a_reload_never_empties_it() {
    let repository = tempfile::tempdir().unwrap();
    add_version(repository.path(), 1);
    let flag = format!("--model-repository={}", repository.path().display());
    let server = TestServer::start(&[&flag, "--model-poll-interval=200ms"]).await;
    add_version(repository.path(), 4);
    let mut seen = Value::Null;
    for _ in 0..300 {
        seen = served_versions(&server).await;
        if seen == serde_json::json!([1, 4]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, serde_json::json!([1, 4]), "the poll loads version 4");

    // A repository emptied by mistake keeps the models in service.
    std::fs::remove_dir_all(repository.path().join("kensa-demo")).unwrap();
    std::fs::create_dir_all(repository.path().join("kensa-demo")).unwrap();
    let response = server
        .client
        .post(server.url("/v1/models/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(served_versions(&server).await, serde_json::json!([1, 4]));
    let unit = server
        .inspect(&samples()[0], &[("inspection_id", "still")])
        .await;
    assert_eq!(unit.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_station_runs_its_version_and_the_policy_picks_what_loads() {
    let repository = tempfile::tempdir().unwrap();
    for version in 1..=3 {
        add_version(repository.path(), version);
    }
    let config = repository.path().join("kensa.toml");
    std::fs::write(
        &config,
        "version-policy = \"latest:2\"\n\
         [[versions]]\nstation = \"canary\"\nversion = 2\n\
         [[versions]]\nline = \"L9\"\nmodel = \"kensa-demo\"\nversion = 2\n\
         [[versions]]\nstation = \"retired\"\nversion = 1\n",
    )
    .unwrap();
    let server = TestServer::start(&[
        &format!("--model-repository={}", repository.path().display()),
        &format!("--config={}", config.display()),
    ])
    .await;
    assert_eq!(served_versions(&server).await, serde_json::json!([2, 3]));
    let models: Value = server.get_json("/v1/models").await;
    assert_eq!(models["version_policy"], "latest:2");
    assert_eq!(models["version_routes"][0]["station"], "canary");

    let version_for = |station: &'static str, fields: Vec<(&'static str, &'static str)>| {
        let server = &server;
        async move {
            let unit = format!("{station}-{}", fields.len());
            let mut all = vec![("station_id", station), ("inspection_id", unit.as_str())];
            all.extend(fields);
            let sample = &samples()[0];
            all.push(("note", sample.note.as_str()));
            let response = server.post_unit("", &sample.image, &all).await;
            assert_eq!(response.status(), 200);
            let verdict: Value = response.json().await.unwrap();
            verdict["model_version"].as_u64().unwrap()
        }
    };
    assert_eq!(version_for("canary", vec![]).await, 2, "the canary's route");
    assert_eq!(version_for("aoi-01", vec![]).await, 3, "the rest: newest");
    assert_eq!(
        version_for("aoi-02", vec![("line", "L9")]).await,
        2,
        "a line route"
    );
    assert_eq!(
        version_for("canary", vec![("model_version", "3")]).await,
        3,
        "a pinned request wins"
    );
    assert_eq!(
        version_for("retired", vec![]).await,
        3,
        "a route to a version not loaded falls back to the newest"
    );
}
