//! The one error type of the request path.
//!
//! Every front door (HTTP today, gRPC and the Open Inference Protocol later) turns an [`Error`]
//! into its own wire status through the single mapping below, so a given failure always gets
//! the same status and the same machine-readable code wherever it came in.

use std::time::Duration;

use axum::http::StatusCode;

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
    /// ONNX Runtime failed on a batch.
    #[error("inference failed: {0}")]
    Inference(String),
    /// A bug or an unexpected state; never caused by input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
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
            Error::Inference(_) => "inference_failed",
            Error::Internal(_) => "internal",
        }
    }

    /// How long a client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::QueueFull { retry_after, .. } => Some(*retry_after),
            Error::Unavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
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
            Error::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Error::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Inference(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
