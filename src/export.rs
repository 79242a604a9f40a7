//! Stored verdicts as training data (`GET /v1/verdicts/export`), in exactly the dataset format
//! the model pipeline's `train` reads (`models/README.md`, "Dataset format"): a table with one
//! row per unit (`image`, `note`, `label`), as `data.csv` or `data.jsonl`, and with `images` a
//! tar of the dataset folder (`labels.json`, `images/...`, the table) ready for `train --data`.
//!
//! The label is the newest review's where a person reviewed the unit, the model's otherwise
//! (`label_source` says which). Only units whose image the store kept (`--retain-images`) are
//! exported: a row without its image is no training data. `group` names the physical unit, so
//! the pipeline keeps shots of one part on one side of its split. Extra columns (`group`,
//! `label_source`, `model_label`, `station_id`, `inspection_id`, `cursor`) are ignored by
//! readers that do not know them.
//!
//! The answer is streamed: rows are read from the store a page at a time after the `since`
//! cursor, and each image goes out as soon as it is read (the table, small, goes last in a tar).

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::Error;
use crate::model::manifest::Label;
use crate::store::StoredVerdict;
use crate::store::VerdictQuery;
use crate::store::record::panel_of;
use crate::verdicts::Verdicts;

/// Verdicts per store read.
const PAGE: usize = 200;
/// Chunks buffered ahead of a slow client.
const CHUNKS_AHEAD: usize = 4;
/// Longest station or inspection id kept in an image's file name.
const NAME_PART_CHARS: usize = 32;
/// The table's columns, in order (the first three are the pipeline's).
const COLUMNS: [&str; 9] = [
    "image",
    "note",
    "label",
    "group",
    "label_source",
    "model_label",
    "station_id",
    "inspection_id",
    "cursor",
];

/// The table's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `data.csv`: a header row, RFC 4180 quoting.
    Csv,
    /// `data.jsonl`: one JSON object per line.
    Jsonl,
}

impl Format {
    /// The table's file name in the dataset folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Csv => "data.csv",
            Format::Jsonl => "data.jsonl",
        }
    }

    /// The table's file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    /// The media type of the table alone.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/x-ndjson",
        }
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// After which cursor, through which filters (the limit is ignored: everything matching).
    pub query: VerdictQuery,
    /// The table's format.
    pub format: Format,
    /// A tar with the images, `labels.json` and the table, instead of the table alone.
    pub images: bool,
    /// The classes, written as `labels.json` into a tar (the model's labels in logits order).
    pub labels: Vec<Label>,
}

/// One row of the dataset table.
#[derive(Debug, Serialize)]
struct Row<'a> {
    image: String,
    note: &'a str,
    label: &'a str,
    group: String,
    label_source: &'static str,
    model_label: &'a str,
    station_id: &'a str,
    inspection_id: &'a str,
    cursor: u64,
}

impl<'a> Row<'a> {
    fn of(stored: &'a StoredVerdict, image: &[u8]) -> Row<'a> {
        let verdict = &stored.verdict;
        let (label, label_source) = match &stored.review {
            Some(review) => (review.label.as_str(), "review"),
            None => (verdict.label.as_str(), "model"),
        };
        Row {
            image: image_path(stored, image),
            note: &stored.note,
            label,
            group: group(stored),
            label_source,
            model_label: &verdict.label,
            station_id: &verdict.station_id,
            inspection_id: &verdict.inspection_id,
            cursor: stored.cursor,
        }
    }

    fn line(&self, format: Format) -> Result<String, Error> {
        match format {
            Format::Jsonl => serde_json::to_string(self)
                .map(|json| json + "\n")
                .map_err(|e| Error::Internal(format!("export row does not serialize: {e}"))),
            Format::Csv => Ok(csv_line(&[
                &self.image,
                self.note,
                self.label,
                &self.group,
                self.label_source,
                self.model_label,
                self.station_id,
                self.inspection_id,
                &self.cursor.to_string(),
            ])),
        }
    }
}

/// Streams the export; the stream ends early (with an error) when the store fails midway.
pub fn export(
    verdicts: Verdicts,
    request: ExportRequest,
) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
    let (chunks, receiver) = mpsc::channel(CHUNKS_AHEAD);
    tokio::spawn(async move {
        if let Err(error) = produce(&verdicts, request, &chunks).await {
            tracing::warn!(%error, "verdict export failed midway");
            let _ = chunks.send(Err(error)).await;
        }
    });
    ReceiverStream::new(receiver)
}

/// The client went away: stop reading.
struct Gone;

async fn send(chunks: &mpsc::Sender<Result<Bytes, Error>>, chunk: Bytes) -> Result<(), Gone> {
    chunks.send(Ok(chunk)).await.map_err(|_| Gone)
}

async fn produce(
    verdicts: &Verdicts,
    request: ExportRequest,
    chunks: &mpsc::Sender<Result<Bytes, Error>>,
) -> Result<(), Error> {
    let ExportRequest {
        mut query,
        format,
        images,
        labels,
    } = request;
    query.limit = PAGE;
    let mut table = String::new();
    if format == Format::Csv {
        table.push_str(&csv_line(&COLUMNS));
    }
    loop {
        let page = verdicts.page(&query, Duration::ZERO).await?;
        if page.verdicts.is_empty() {
            break;
        }
        query.after = page.next_cursor;
        for stored in page.verdicts.iter().filter(|v| v.image_retained) {
            let verdict = &stored.verdict;
            let image = match verdicts
                .image(&verdict.station_id, &verdict.inspection_id)
                .await
            {
                Ok(image) => image,
                // Retention deleted it since the page was read.
                Err(Error::ImageNotRetained { .. } | Error::VerdictNotFound { .. }) => continue,
                Err(error) => return Err(error),
            };
            let row = Row::of(stored, &image);
            table.push_str(&row.line(format)?);
            let chunk = if images {
                tar_entry(&row.image, &image)?
            } else {
                Bytes::from(std::mem::take(&mut table))
            };
            if send(chunks, chunk).await.is_err() {
                return Ok(());
            }
        }
    }
    let mut tail = Vec::new();
    if images {
        let labels = serde_json::to_vec_pretty(&labels)
            .map_err(|e| Error::Internal(format!("labels do not serialize: {e}")))?;
        tail.extend_from_slice(&tar_entry("labels.json", &labels)?);
        tail.extend_from_slice(&tar_entry(format.file_name(), table.as_bytes())?);
        tail.extend_from_slice(&[0; 1024]);
    } else {
        tail.extend_from_slice(table.as_bytes());
    }
    let _ = send(chunks, Bytes::from(tail)).await;
    Ok(())
}

/// `images/<cursor>_<station>_<inspection>.<ext>`: unique by the cursor, safe as a file name
/// whatever the ids hold, the extension from the image's own bytes.
fn image_path(stored: &StoredVerdict, image: &[u8]) -> String {
    let part = |value: &str| -> String {
        value
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(NAME_PART_CHARS)
            .collect()
    };
    let extension = image::guess_format(image)
        .ok()
        .and_then(|format| format.extensions_str().first().copied())
        .unwrap_or("bin");
    format!(
        "images/{:08}_{}_{}.{extension}",
        stored.cursor,
        part(&stored.verdict.station_id),
        part(&stored.verdict.inspection_id)
    )
}

/// The physical unit: `<lot>/<panel>/<unit_position>` when the station sent a unit position
/// (shots of one part from several stations or re-inspections share it), else the inspection.
fn group(stored: &StoredVerdict) -> String {
    let metadata = &stored.verdict.metadata;
    match metadata.get("unit_position") {
        Some(unit) => [
            metadata.get("lot_id").map(String::as_str),
            panel_of(metadata),
        ]
        .into_iter()
        .flatten()
        .chain([unit.as_str()])
        .collect::<Vec<_>>()
        .join("/"),
        None => format!(
            "{}/{}",
            stored.verdict.station_id, stored.verdict.inspection_id
        ),
    }
}

/// One CSV record (RFC 4180): fields with a comma, quote or line break are quoted, quotes
/// doubled.
fn csv_line(fields: &[&str]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|field| {
            if field.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", field.replace('"', "\"\""))
            } else {
                (*field).to_string()
            }
        })
        .collect();
    quoted.join(",") + "\r\n"
}

/// One file of a tar archive (ustar header, the data, zero padding to 512 bytes).
fn tar_entry(path: &str, data: &[u8]) -> Result<Bytes, Error> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(path)
        .map_err(|e| Error::Internal(format!("tar path {path:?}: {e}")))?;
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(chrono::Utc::now().timestamp().unsigned_abs());
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut entry = Vec::with_capacity(512 + data.len().next_multiple_of(512));
    entry.extend_from_slice(header.as_bytes());
    entry.extend_from_slice(data);
    entry.resize(entry.len().next_multiple_of(512), 0);
    Ok(Bytes::from(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_line(&["a", "b c"]), "a,b c\r\n");
        assert_eq!(
            csv_line(&["dia 53.6µm, depth 4", "say \"hi\"", "two\nlines"]),
            "\"dia 53.6µm, depth 4\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
    }

    #[test]
    fn tar_entries_are_whole_blocks_with_a_valid_header() {
        let entry = tar_entry("images/1.png", b"abc").unwrap();
        assert_eq!(entry.len(), 1024);
        let mut archive = tar::Archive::new(&entry[..]);
        let mut entries = archive.entries().unwrap();
        let first = entries.next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str(), Some("images/1.png"));
        assert_eq!(first.size(), 3);
    }
}
