//! Query-string and path extractors whose rejections are the request path's [`Error`].
//!
//! axum's own `Query` and `Path` answer a malformed query string (`?heatmap=maybe`, a repeated
//! key) or a path segment that is not UTF-8 with a plain-text 400 of their own, outside the one
//! error mapping: a client then gets no JSON body and no `code` to act on, and the error log
//! and the per-code error counter never see it. These wrappers parse the same way and turn the
//! rejection into [`Error::BadRequest`] with axum's explanation as its message.

use axum::extract::FromRequestParts;
use axum::http::Uri;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// `uri`'s query string deserialized into `T`, for handlers that read several option sets
/// from one query (the verdict reads and the export).
pub fn parse_query<T: DeserializeOwned>(uri: &Uri) -> Result<T, Error> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|axum::extract::Query(value)| value)
        .map_err(|rejection| Error::BadRequest(rejection.body_text()))
}

/// The query string deserialized into `T`; a bad one is [`Error::BadRequest`].
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        parse_query(&parts.uri).map(Query)
    }
}

/// The route's path parameters deserialized into `T`; a bad one is [`Error::BadRequest`].
///
/// axum also rejects a route whose parameters do not fit `T` (a wiring mistake the tests
/// catch, not something a request can cause); that surfaces as a 400 as well.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| Error::BadRequest(rejection.body_text()))
    }
}
