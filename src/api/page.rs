//! The operator page's files, embedded in the binary (nothing is fetched at run time): plain
//! HTML, CSS and JavaScript with no build step, so what is reviewed in `src/web/` is exactly
//! what the browser runs, and no JavaScript toolchain is needed to build kensa.
//!
//! Every answer carries a Content-Security-Policy that allows only these files (no inline
//! script, no other origin), so text from stations and reviewers cannot run as code even if a
//! rendering bug let markup through.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::state::AppState;

/// Only the page's own files; images also from blobs and data URLs (heat maps fetched with
/// the page's credentials, "try it" answers).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| {
                file(
                    include_str!("../web/index.html"),
                    "text/html; charset=utf-8",
                )
            }),
        )
        .route(
            "/ui/app.js",
            get(|| {
                file(
                    include_str!("../web/app.js"),
                    "text/javascript; charset=utf-8",
                )
            }),
        )
        .route(
            "/ui/app.css",
            get(|| file(include_str!("../web/app.css"), "text/css; charset=utf-8")),
        )
}

async fn file(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // Revalidated on every load, so an upgraded kensa serves its own page at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
