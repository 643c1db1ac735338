//! Errors as RFC 9457 problem details (`application/problem+json`), one mapping from the
//! library's kinds of failure to HTTP statuses.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use connector_host::failure::{
    self, AlreadyRunning, Closed, Conflict, Forbidden, Missing, NotFound, Unavailable,
};
use serde::Serialize;
use utoipa::ToSchema;

/// A problem details object (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, in words, for this occurrence.
    pub detail: String,
    /// Seconds to wait before trying again (429 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// What the request lacked, for a front end to word in its own terms (the console).
    #[serde(skip)]
    pub missing: Option<Box<Missing>>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
            missing: None,
        }
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "sign in: an API token as `Authorization: Bearer <token>`, or a console session",
        )
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<anyhow::Error> for Problem {
    fn from(e: anyhow::Error) -> Problem {
        // What is closed to the caller is answered as if it did not exist.
        if let Some(closed) = e.chain().find_map(|c| c.downcast_ref::<Closed>()) {
            return Problem::new(
                StatusCode::NOT_FOUND,
                format!("there is no {}", closed.subject),
            );
        }
        if let Some(missing) = e.chain().find_map(|c| c.downcast_ref::<Missing>()) {
            return Problem {
                missing: Some(Box::new(missing.clone())),
                ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, words(missing))
            };
        }
        let status = if failure::is::<NotFound>(&e) {
            StatusCode::NOT_FOUND
        } else if failure::is::<Forbidden>(&e) {
            StatusCode::FORBIDDEN
        } else if failure::is::<Conflict>(&e) || failure::is::<AlreadyRunning>(&e) {
            StatusCode::CONFLICT
        } else if failure::is::<Unavailable>(&e) {
            StatusCode::BAD_GATEWAY
        } else {
            // What the library refuses is what it was asked: settings, names, mappings.
            StatusCode::UNPROCESSABLE_ENTITY
        };
        Problem::new(
            status,
            connector_host::text::clean(&format!("{e:#}"), 4_000),
        )
    }
}

/// What is missing, in the API's terms: the request's members, the server's setup.
fn words(missing: &Missing) -> String {
    match missing {
        Missing::PrivacyNotice { .. } => {
            format!("{missing}; send \"accept_privacy_notice\": true")
        }
        Missing::IrreversibleConsent { .. } => {
            format!("{missing}; send \"confirm_irreversible\": true")
        }
        Missing::ExportsRemoved {
            connection,
            exports,
        } => {
            let (which, those, them) = Missing::exports_words(exports);
            format!(
                "connection `{connection}` is used by {which}; remove {those} first, or ask with `?with_exports=true` to remove {them} too"
            )
        }
        Missing::Approval { connector, .. } => format!(
            "{missing} (GET /api/v1/connectors shows what it asks for; POST /api/v1/connectors/{connector}/approve approves it)"
        ),
        Missing::MasterKey | Missing::ProfileSource | Missing::OAuthApp { .. } => {
            format!("{missing}; the server's operator sets it up")
        }
    }
}

macro_rules! from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for Problem {
            fn from(r: $rejection) -> Problem {
                let status = match r.status() {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    StatusCode::NOT_FOUND => StatusCode::NOT_FOUND,
                    _ => StatusCode::BAD_REQUEST,
                };
                Problem::new(status, r.body_text())
            }
        }
    )*};
}
from_rejection!(JsonRejection, QueryRejection, PathRejection, FormRejection);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = self.retry_after;
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// What a handler returns.
pub type Answer<T> = Result<T, Problem>;
