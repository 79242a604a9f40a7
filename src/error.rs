//! The one error type of the request path.
//!
//! Every front door (HTTP, gRPC, the Open Inference Protocol over both) turns an [`Error`] into
//! its own wire status through the single mappings below (one to an HTTP status, one to a gRPC
//! status), so a given failure always gets the same status and the same machine-readable code
//! wherever it came in.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::metadata::MetadataValue;

/// Why a request could not be answered with a verdict.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field is missing, malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The image bytes are not a decodable PNG, JPEG, BMP or TIFF.
    #[error("image could not be decoded: {0}")]
    BadImage(String),
    /// The image declares more pixels than allowed; refused before decoding.
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit}")]
    ImageTooLarge {
        /// Width read from the header.
        width: u32,
        /// Height read from the header.
        height: u32,
        /// Width times height.
        pixels: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The encoded image or the whole body is larger than allowed.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge {
        /// What was too large ("image", "request body").
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The note is longer than allowed.
    #[error("note is {chars} characters, over the limit of {limit}")]
    NoteTooLong {
        /// Length of the note in characters.
        chars: usize,
        /// The configured limit.
        limit: usize,
    },
    /// No model (or version) of that name is loaded.
    #[error("model {0} is not loaded")]
    ModelNotFound(String),
    /// The batch queue is full; the client should retry after the hint.
    #[error("queue is full ({capacity} requests); retry in {}", humantime::format_duration(*retry_after))]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
        /// A hint for the Retry-After header.
        retry_after: Duration,
    },
    /// The request's deadline passed before it could run.
    #[error("deadline of {}ms passed before inference", deadline.as_millis())]
    DeadlineExceeded {
        /// The deadline the request carried.
        deadline: Duration,
    },
    /// The service is warming up or draining.
    #[error("service is not ready: {0}")]
    Unavailable(&'static str),
    /// The (station_id, inspection_id) key already holds a verdict for a different image.
    #[error("{0}")]
    Conflict(String),
    /// No verdict is stored under that (station_id, inspection_id).
    #[error("no verdict stored for station {station_id:?}, inspection {inspection_id:?}")]
    VerdictNotFound {
        /// The station asked about.
        station_id: String,
        /// The inspection asked about.
        inspection_id: String,
    },
    /// The verdict is stored but its image was not kept (image retention is off, or the unit
    /// was neither a defect nor unsure, or the size cap pushed it out).
    #[error("the image of station {station_id:?}, inspection {inspection_id:?} was not retained")]
    ImageNotRetained {
        /// The station asked about.
        station_id: String,
        /// The inspection asked about.
        inspection_id: String,
    },
    /// The verdict store cannot take or give verdicts right now; nothing was acknowledged, so
    /// the client retries (with the same inspection id).
    #[error("{0}")]
    StoreUnavailable(String),
    /// No route has this path.
    #[error("no route {method} {path}; the routes are listed in the README (API)")]
    RouteNotFound {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// The path exists but not for this method.
    #[error("{path} does not take {method}")]
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// ONNX Runtime failed on a batch; only that batch fails, so a retry may succeed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// No valid credentials: no token, an unknown token, or an unknown client certificate.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this (a scope it lacks, a station not its own).
    #[error("{0}")]
    Forbidden(String),
    /// The caller sends faster than its rate limit allows.
    #[error("rate limit reached; retry in {}", humantime::format_duration(*retry_after))]
    RateLimited {
        /// When a request will be let in again.
        retry_after: Duration,
    },
    /// The request body did not arrive in time (a stalled or very slow client).
    #[error("{0}")]
    RequestTimeout(String),
    /// A bug or an unexpected state; never caused by input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Logs the error by what it means for operators: a fault of the server at error level;
    /// the designed answers to load, deadlines and outages (503, 504) at warn; a full queue
    /// (429) at info; a client's mistake not at all (it is counted in the metrics).
    pub fn log(&self) {
        match self {
            Error::Inference(_) | Error::Internal(_) => {
                tracing::error!(error = %self, code = self.code(), "request failed");
            }
            Error::Unavailable(_) | Error::StoreUnavailable(_) | Error::DeadlineExceeded { .. } => {
                tracing::warn!(error = %self, code = self.code(), "request not served");
            }
            Error::QueueFull { .. } => {
                tracing::info!(error = %self, code = self.code(), "request shed");
            }
            _ => {}
        }
    }

    /// A stable machine-readable code for clients and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::BadImage(_) => "bad_image",
            Error::ImageTooLarge { .. } => "image_too_large",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::NoteTooLong { .. } => "note_too_long",
            Error::ModelNotFound(_) => "model_not_found",
            Error::QueueFull { .. } => "queue_full",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
            Error::Unavailable(_) => "unavailable",
            Error::Conflict(_) => "conflict",
            Error::VerdictNotFound { .. } => "verdict_not_found",
            Error::ImageNotRetained { .. } => "image_not_retained",
            Error::StoreUnavailable(_) => "store_unavailable",
            Error::RouteNotFound { .. } => "route_not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Inference(_) => "inference_failed",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Forbidden(_) => "forbidden",
            Error::RateLimited { .. } => "rate_limited",
            Error::RequestTimeout(_) => "request_timeout",
            Error::Internal(_) => "internal",
        }
    }

    /// How long a client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::QueueFull { retry_after, .. } | Error::RateLimited { retry_after } => {
                Some(*retry_after)
            }
            Error::Unavailable(_) | Error::StoreUnavailable(_) | Error::Inference(_) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

/// Store failures never lose an acknowledged verdict: they answer 503 so the client retries,
/// except an unreadable row, which is a bug or damage (500).
impl From<crate::store::StoreError> for Error {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            crate::store::StoreError::Corrupt(_) => Error::Internal(error.to_string()),
            _ => Error::StoreUnavailable(error.to_string()),
        }
    }
}

impl From<&Error> for StatusCode {
    fn from(error: &Error) -> Self {
        match error {
            Error::BadRequest(_) | Error::BadImage(_) | Error::NoteTooLong { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::ImageTooLarge { .. } | Error::PayloadTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::ModelNotFound(_)
            | Error::VerdictNotFound { .. }
            | Error::ImageNotRetained { .. }
            | Error::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::QueueFull { .. } | Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Unavailable(_) | Error::StoreUnavailable(_) | Error::Inference(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every HTTP error response: `{"error": "...", "code": "..."}` (the Open Inference
/// Protocol's error format is the `error` field alone, so V2 clients read it too).
#[derive(Serialize)]
struct ErrorBody {
    error: String,
    code: &'static str,
}

/// The code of the error a response carries, for the request metrics (an extension of the
/// response, read by the HTTP metrics layer).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// The one HTTP form of an error: status, JSON body, `Retry-After` when retrying helps. Server
/// faults are logged here, once.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from(&self);
        self.log();
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
                code: self.code(),
            }),
        )
            .into_response();
        if let Some(after) = self.retry_after() {
            let seconds = after.as_secs_f64().ceil().max(1.0).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kensa\""),
            );
        }
        response
    }
}

/// gRPC metadata key carrying [`Error::code`].
pub const GRPC_CODE_KEY: &str = "kensa-error-code";
/// gRPC metadata key of the retry hint in milliseconds (the gRPC retry design's server pushback).
pub const GRPC_RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// Too-large images and bodies map to `InvalidArgument`, not `ResourceExhausted`: retrying the
/// same request can never succeed, and clients commonly retry `ResourceExhausted`, which is kept
/// for a full queue (with a retry hint in `grpc-retry-pushback-ms`). The stable code travels in
/// the `kensa-error-code` metadata entry.
impl From<&Error> for tonic::Status {
    fn from(error: &Error) -> Self {
        let code = match error {
            Error::BadRequest(_)
            | Error::BadImage(_)
            | Error::NoteTooLong { .. }
            | Error::ImageTooLarge { .. }
            | Error::PayloadTooLarge { .. } => tonic::Code::InvalidArgument,
            Error::ModelNotFound(_)
            | Error::VerdictNotFound { .. }
            | Error::ImageNotRetained { .. } => tonic::Code::NotFound,
            Error::QueueFull { .. } | Error::RateLimited { .. } => tonic::Code::ResourceExhausted,
            Error::DeadlineExceeded { .. } | Error::RequestTimeout(_) => {
                tonic::Code::DeadlineExceeded
            }
            Error::Unavailable(_) | Error::StoreUnavailable(_) | Error::Inference(_) => {
                tonic::Code::Unavailable
            }
            Error::Conflict(_) => tonic::Code::AlreadyExists,
            Error::RouteNotFound { .. } | Error::MethodNotAllowed { .. } => {
                tonic::Code::Unimplemented
            }
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::Forbidden(_) => tonic::Code::PermissionDenied,
            Error::Internal(_) => tonic::Code::Internal,
        };
        let mut status = tonic::Status::new(code, error.to_string());
        let metadata = status.metadata_mut();
        metadata.insert(GRPC_CODE_KEY, MetadataValue::from_static(error.code()));
        if let Some(after) = error.retry_after() {
            let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
            metadata.insert(GRPC_RETRY_PUSHBACK_KEY, MetadataValue::from(millis));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_carry_the_code_and_the_retry_hint() {
        let full = Error::QueueFull {
            capacity: 4,
            retry_after: Duration::from_millis(250),
        };
        let status = tonic::Status::from(&full);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get(GRPC_CODE_KEY).unwrap(), "queue_full");
        assert_eq!(
            status.metadata().get(GRPC_RETRY_PUSHBACK_KEY).unwrap(),
            "250"
        );
        let large = Error::PayloadTooLarge {
            what: "image",
            size: 2,
            limit: 1,
        };
        let status = tonic::Status::from(&large);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.metadata().get(GRPC_RETRY_PUSHBACK_KEY).is_none());
        let failed = Error::Inference("poisoned batch".into());
        assert_eq!(StatusCode::from(&failed), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            tonic::Status::from(&failed).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(failed.retry_after(), Some(Duration::from_secs(1)));
        let status = tonic::Status::from(&Error::Unavailable("warming up"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status.metadata().get(GRPC_RETRY_PUSHBACK_KEY).unwrap(),
            "1000"
        );
    }
}
