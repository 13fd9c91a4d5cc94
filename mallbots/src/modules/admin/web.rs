//! The admin web app's files, compiled into the binary (no front-end build step, nothing to
//! deploy beside it): `/admin` is the page, `/admin/app.js` and `/admin/app.css` its script and
//! style. The page talks to the REST API and to the live feed ([`super::live`]).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../../web/index.html");
const SCRIPT: &str = include_str!("../../../web/app.js");
const STYLE: &str = include_str!("../../../web/app.css");

/// Only this origin's script, style and connections (the live feed's WebSocket included).
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                      connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The routes of the web app's files.
pub fn routes() -> Router {
    Router::new()
        .route("/admin", get(|| file("text/html; charset=utf-8", INDEX)))
        .route("/admin/", get(|| file("text/html; charset=utf-8", INDEX)))
        .route("/admin/app.js", get(|| file("text/javascript; charset=utf-8", SCRIPT)))
        .route("/admin/app.css", get(|| file("text/css; charset=utf-8", STYLE)))
}

async fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Small files that change with the binary: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
