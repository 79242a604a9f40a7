//! `GET /v1/verdicts/export` through the real server: the dataset table in the pipeline's
//! format (CSV and JSONL), reviewed labels in place of the model's, only units whose image was
//! kept, the filters of the MES reads, and the tar with the images and `labels.json`.

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;

use common::{TestServer, demo_with_decision, label_names, samples};
use serde_json::{Value, json};

/// Normal fixtures pass (0.91), voids go to review (0.96 < 0.975), oversize and offset fail;
/// verdicts below 0.95 confidence count as unsure, so every fixture's image is kept.
async fn start() -> (TestServer, tempfile::TempDir) {
    let model = demo_with_decision(common::review_decision());
    let server = TestServer::start(&[
        &format!("--model-repository={}", model.path().display()),
        "--retain-images",
        "--retain-images-below-confidence=0.95",
    ])
    .await;
    (server, model)
}

/// Inspects every fixture sample once on station aoi-07 (ids s0..s9), the first five with a
/// unit position on lot L1; returns the images by inspection id.
async fn inspect_all(server: &TestServer) -> BTreeMap<String, Vec<u8>> {
    let mut images = BTreeMap::new();
    for (i, sample) in samples().into_iter().enumerate() {
        let id = format!("s{i}");
        let unit = format!("R1C{i}");
        let mut fields = vec![
            ("station_id", "aoi-07"),
            ("inspection_id", id.as_str()),
            ("note", sample.note.as_str()),
            ("line", "L3"),
        ];
        if i < 5 {
            fields.extend([
                ("lot_id", "L1"),
                ("strip_id", "S2"),
                ("unit_position", unit.as_str()),
            ]);
        }
        let response = server.post_unit("", &sample.image, &fields).await;
        assert_eq!(response.status(), 200);
        images.insert(id, sample.image);
    }
    images
}

async fn review(server: &TestServer, inspection: &str, label: &str) {
    let response = server
        .client
        .post(server.url(&format!("/v1/verdicts/aoi-07/{inspection}/review")))
        .json(&json!({"label": label, "reviewer": "Aiko", "comment": "checked, \"really\""}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

async fn download(server: &TestServer, query: &str) -> reqwest::Response {
    let response = server
        .client
        .get(server.url(&format!("/v1/verdicts/export{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{query}");
    response
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_rows_carry_the_reviewed_label_where_there_is_one() {
    let (server, _model) = start().await;
    let images = inspect_all(&server).await;
    review(&server, "s2", "normal").await;
    review(&server, "s3", "void").await;

    let response = download(&server, "?format=jsonl").await;
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let rows = jsonl(&response.text().await.unwrap());
    assert_eq!(rows.len(), images.len(), "every fixture's image was kept");
    let by_id: BTreeMap<&str, &Value> = rows
        .iter()
        .map(|r| (r["inspection_id"].as_str().unwrap(), r))
        .collect();
    let overridden = by_id["s2"];
    assert_eq!(overridden["label"], "normal");
    assert_eq!(overridden["label_source"], "review");
    assert_eq!(overridden["model_label"], "void");
    assert_eq!(by_id["s3"]["label_source"], "review");
    assert_eq!(by_id["s4"]["label"], "oversize");
    assert_eq!(by_id["s4"]["label_source"], "model");
    assert_eq!(by_id["s0"]["group"], "L1/S2/R1C0", "the physical unit");
    assert_eq!(
        by_id["s7"]["group"], "aoi-07/s7",
        "the inspection without a unit"
    );
    let sample = &samples()[0];
    assert_eq!(by_id["s0"]["note"], sample.note);
    let image = by_id["s0"]["image"].as_str().unwrap();
    assert!(
        image.starts_with("images/") && image.ends_with("_aoi-07_s0.png"),
        "{image}"
    );
    let cursors: Vec<u64> = rows.iter().map(|r| r["cursor"].as_u64().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "in cursor order");

    let after = jsonl(&download(&server, "?since=8").await.text().await.unwrap());
    assert_eq!(after.len(), 2, "after a cursor");
    let reviewed = download(&server, "?reviewed=true&format=jsonl").await;
    let reviewed = jsonl(&reviewed.text().await.unwrap());
    let ids: Vec<&str> = reviewed
        .iter()
        .map(|r| r["inspection_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s2", "s3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_is_what_the_pipeline_reads_and_the_tar_holds_the_dataset_folder() {
    let (server, _model) = start().await;
    let images = inspect_all(&server).await;
    review(&server, "s2", "normal").await;

    let csv = download(&server, "?format=csv").await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    let mut lines = text.split("\r\n");
    assert_eq!(
        lines.next().unwrap(),
        "image,note,label,group,label_source,model_label,station_id,inspection_id,cursor"
    );
    assert!(
        text.contains(",normal,L1/S2/R1C2,review,void,aoi-07,s2,3\r\n"),
        "{text}"
    );

    let tar = download(&server, "?format=csv&images=true").await;
    assert_eq!(tar.headers()["content-type"], "application/x-tar");
    let bytes = tar.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        files.insert(path, content);
    }
    let labels: Vec<Value> = serde_json::from_slice(&files["labels.json"]).unwrap();
    let names: Vec<&str> = labels.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, label_names(), "the model's classes in logits order");
    assert_eq!(labels[0]["is_normal"], true);
    assert_eq!(
        String::from_utf8(files["data.csv"].clone()).unwrap(),
        text,
        "the same table"
    );
    for (id, image) in &images {
        let name = files
            .keys()
            .find(|k| k.ends_with(&format!("_aoi-07_{id}.png")))
            .unwrap_or_else(|| panic!("{id} is in the tar"));
        assert!(text.contains(name.as_str()), "{name} is in the table");
        assert_eq!(&files[name], image, "{id} as the station sent it");
    }
    assert_eq!(files.len(), images.len() + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_without_a_kept_image_are_not_training_data_and_bad_options_are_400() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[2];
    let response = server
        .post_unit(
            "",
            &sample.image,
            &[("station_id", "aoi-07"), ("note", &sample.note)],
        )
        .await;
    assert_eq!(response.status(), 200);
    let empty = download(&server, "?format=csv").await.text().await.unwrap();
    assert_eq!(
        empty,
        "image,note,label,group,label_source,model_label,station_id,inspection_id,cursor\r\n"
    );
    for bad in [
        "?format=xml",
        "?images=maybe",
        "?since=-1",
        "?reviewed=perhaps",
    ] {
        let response = server
            .client
            .get(server.url(&format!("/v1/verdicts/export{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["code"],
            "bad_request"
        );
    }
}
