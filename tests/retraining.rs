//! The review loop end to end: units inspected by a running kensa, reviewed by people, exported
//! as a dataset (`GET /v1/verdicts/export?images=true`), trained on by the model pipeline (a
//! tiny run of the real `python -m kensa_pipeline train` and `export`), and the result served
//! by kensa as version 2 of the same model beside version 1.
//!
//! Needs the pipeline's Python environment: `.venv/bin/python` (scripts/setup-python.sh) or the
//! interpreter named by `KENSA_PYTHON`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestServer, demo_dir, demo_with_decision, samples};
use serde_json::{Value, json};

fn python() -> PathBuf {
    std::env::var_os("KENSA_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        PathBuf::from,
    )
}

/// Runs `python -m kensa_pipeline --threads 1 <args>` on this checkout's pipeline.
async fn pipeline(args: Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-python.sh or set KENSA_PYTHON",
        python.display()
    );
    let mut command = Command::new(&python);
    command
        .args(["-m", "kensa_pipeline", "--threads", "1"])
        .args(&args)
        .env("PYTHONPATH", root.join("models/pipeline"))
        .current_dir(root);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the pipeline runs");
    assert!(
        output.status.success(),
        "pipeline {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewed_verdicts_train_a_model_that_kensa_serves_as_version_2() {
    let model = demo_with_decision(common::review_decision());
    let server = TestServer::start(&[
        &format!("--model-repository={}", model.path().display()),
        "--retain-images",
        "--retain-images-below-confidence=0.95",
    ])
    .await;
    for round in 0..3 {
        for (i, sample) in samples().into_iter().enumerate() {
            let id = format!("r{round}-{i}");
            let unit = format!("R{round}C{i}");
            let response = server
                .post_unit(
                    "",
                    &sample.image,
                    &[
                        ("station_id", "aoi-07"),
                        ("inspection_id", &id),
                        ("note", &sample.note),
                        ("line", "L3"),
                        ("lot_id", "L2438-12"),
                        ("unit_position", &unit),
                    ],
                )
                .await;
            assert_eq!(response.status(), 200);
        }
    }
    // What waits for a person: no class sure enough to pass or fail (pass 0.85, fail 0.975).
    let unsure: Vec<bool> = samples()
        .iter()
        .map(|s| {
            let defect = s.probabilities[1..].iter().copied().fold(0.0, f32::max);
            s.probabilities[0] < 0.85 && defect < 0.975
        })
        .collect();
    let expected = 3 * unsure.iter().filter(|u| **u).count();
    assert!(
        expected > 0,
        "the fixtures include units a person must look at"
    );
    let waiting: Value = server
        .get_json("/v1/verdicts?disposition=review&reviewed=false&limit=100")
        .await;
    let waiting = waiting["verdicts"].as_array().unwrap();
    assert_eq!(
        waiting.len(),
        expected,
        "the unsure units wait for a person"
    );
    for unit in waiting {
        let id = unit["inspection_id"].as_str().unwrap();
        let index: usize = id.rsplit('-').next().unwrap().parse().unwrap();
        assert!(unsure[index], "{id} was sure enough to decide");
        let label = &samples()[index].label;
        let response = server
            .client
            .post(server.url(&format!("/v1/verdicts/aoi-07/{id}/review")))
            .json(&json!({"label": label, "reviewer": "Aiko", "comment": "checked"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }

    let export = server
        .client
        .get(server.url("/v1/verdicts/export?format=jsonl&images=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let tar = export.bytes().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dataset = work.path().join("dataset");
    tar::Archive::new(&tar[..]).unpack(&dataset).unwrap();
    let rows = std::fs::read_to_string(dataset.join("data.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 30);
    assert_eq!(
        rows.lines()
            .filter(|l| l.contains(r#""label_source":"review""#))
            .count(),
        expected
    );

    let run = work.path().join("runs/kensa-demo");
    let repository = work.path().join("repository/kensa-demo");
    std::fs::create_dir_all(&repository).unwrap();
    std::os::unix::fs::symlink(demo_dir(), repository.join("1")).unwrap();
    let path = |p: &Path| p.display().to_string();
    pipeline(
        [
            "train",
            "--data",
            &path(&dataset),
            "--out",
            &path(&run),
            "--tokenizer",
            &path(&demo_dir().join("tokenizer.json")),
            "--epochs",
            "2",
            "--min-epochs",
            "1",
            "--patience",
            "1",
            "--fusion-epochs",
            "1",
            "--batch-size",
            "8",
            "--no-augment",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    pipeline(
        [
            "export",
            "--run",
            &path(&run),
            "--out",
            &path(&repository.join("2")),
            "--name",
            "kensa-demo",
            "--version",
            "2",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(repository.join("2/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        (manifest["name"].clone(), manifest["version"].clone()),
        (json!("kensa-demo"), json!(2))
    );

    let retrained = TestServer::start(&[&format!(
        "--model-repository={}",
        work.path().join("repository").display()
    )])
    .await;
    let models: Value = retrained.get_json("/v1/models").await;
    assert_eq!(models["models"][0]["versions"], json!([1, 2]));
    let sample = &samples()[2];
    for version in ["1", "2"] {
        let response = retrained
            .post_unit(
                "",
                &sample.image,
                &[
                    ("station_id", "aoi-07"),
                    ("note", &sample.note),
                    ("model", "kensa-demo"),
                    ("model_version", version),
                ],
            )
            .await;
        assert_eq!(response.status(), 200);
        let verdict: Value = response.json().await.unwrap();
        assert_eq!(verdict["model_version"].to_string(), version);
        assert_eq!(verdict["probabilities"].as_object().unwrap().len(), 5);
    }
}
