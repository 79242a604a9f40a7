//! What every HTTP handler shares, and reading a request body within its limit.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::header;
use http_body_util::BodyExt as _;

use crate::access::Gate;
use crate::error::Error;
use crate::inspector::Inspector;
use crate::metrics::Metrics;
use crate::model::lifecycle::ModelLifecycle;
use crate::reviews::Reviews;
use crate::stations::Stations;
use crate::verdicts::Verdicts;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The hallway: inspections.
    pub inspector: Arc<Inspector>,
    /// Stored verdicts, for readers.
    pub verdicts: Verdicts,
    /// Reviews of stored verdicts.
    pub reviews: Reviews,
    /// The line overview.
    pub stations: Stations,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Longest a request body may take to arrive.
    pub body_timeout: Duration,
    /// Who may do what, rate and in-flight limits.
    pub gate: Arc<Gate>,
    /// The model repository's reloads and load failures.
    pub models: Arc<ModelLifecycle>,
}

impl AppState {
    /// Reads the whole body within the body limit and the body timeout.
    pub async fn body(&self, request: Request) -> Result<Bytes, Error> {
        self.body_within(request, self.max_body_bytes).await
    }

    /// Reads the whole body within `limit` bytes (a route with small bodies sets its own) and
    /// the body timeout.
    pub async fn body_within(&self, request: Request, limit: usize) -> Result<Bytes, Error> {
        tokio::time::timeout(self.body_timeout, read_body(request, limit))
            .await
            .map_err(|_| {
                Error::RequestTimeout(format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(self.body_timeout)
                ))
            })?
    }
}

/// Most bytes of a refused body read and dropped before answering 413, so the client reads the
/// answer instead of a connection reset (closing a socket with unread data resets it).
const DRAIN_BYTES: usize = 64 << 20;
/// Longest that draining a refused body may take.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads the whole body, refusing with 413 past `limit` without buffering more than that.
async fn read_body(request: Request, limit: usize) -> Result<Bytes, Error> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared
        && size > limit
    {
        let drain = http_body_util::Limited::new(request.into_body(), DRAIN_BYTES).collect();
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        return Err(Error::PayloadTooLarge {
            what: "request body",
            size,
            limit,
        });
    }
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|error| {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                Error::PayloadTooLarge {
                    what: "request body",
                    size: limit + 1,
                    limit,
                }
            } else {
                Error::BadRequest(format!("could not read the request body: {error}"))
            }
        })
}
