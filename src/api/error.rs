//! [`ApiError`]: what the API answers when it does not do what was asked: an HTTP status and
//! an RFC 7807 problem document (`application/problem+json`) whose `type` ends in a stable
//! kebab-case `code`, also given on its own (Garage's `aws_code`, pict-rs's `ErrorCode`):
//!
//! ```json
//! { "type": "urn:dr:problem:unknown-region", "title": "Unknown region", "status": 400,
//!   "detail": "query parameter `region`: policy app has no target `../../etc` (its targets: local, replica)",
//!   "code": "unknown-region" }
//! ```
//!
//! Messages name objects, never credentials or URLs containing them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No bearer token.
    #[error("a bearer token is required (Authorization: Bearer …)")]
    Unauthorized,
    /// A bearer token nobody issued (or one revoked since).
    #[error("the bearer token is not valid (unknown or revoked)")]
    InvalidToken,
    /// An auditor token on a route that changes something.
    #[error("token `{token}` has the auditor role, which is read-only")]
    ReadOnly {
        /// The token's name.
        token: String,
    },
    /// Over `api.rate_limit_per_minute`.
    #[error("rate limit exceeded; retry in {retry_after} s")]
    RateLimited {
        /// Seconds until the window ends.
        retry_after: u64,
    },
    /// A change sent to the standby instance.
    #[error("this instance is a standby; send it to the active one (see /v1/status `active`)")]
    Standby,
    /// No such policy.
    #[error("no policy `{0}`")]
    UnknownPolicy(String),
    /// No such drill.
    #[error("no drill `{0}`")]
    UnknownDrill(String),
    /// No such drill report.
    #[error("no drill report `{0}`")]
    UnknownReport(String),
    /// No such job (ids are kept for the last finished jobs of this daemon run).
    #[error("no job `{0}` (finished jobs are kept until the daemon restarts, the last 100)")]
    UnknownJob(String),
    /// A route that exists, asked with another method.
    #[error("{path} does not take {method} (see /v1 in the README)")]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// No such route.
    #[error("no route {method} {path} (see /v1 in the README)")]
    NoRoute {
        /// The method asked for.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// `?region=` names no target of the policy.
    #[error(
        "query parameter `region`: policy {policy} has no target `{region}` (its targets: {targets})"
    )]
    UnknownRegion {
        /// The policy.
        policy: String,
        /// What was asked for.
        region: String,
        /// Its targets, comma-separated.
        targets: String,
    },
    /// A malformed or unknown query parameter.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// The job is already running.
    #[error("{0} is running")]
    Running(String),
    /// Something failed on our side; the message is the typed error chain.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::ReadOnly { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Standby => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnknownPolicy(_)
            | Self::UnknownDrill(_)
            | Self::UnknownReport(_)
            | Self::UnknownJob(_)
            | Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnknownRegion { .. } | Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::Running(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::InvalidToken => "invalid-token",
            Self::ReadOnly { .. } => "read-only-token",
            Self::RateLimited { .. } => "rate-limited",
            Self::Standby => "standby",
            Self::UnknownPolicy(_) => "unknown-policy",
            Self::UnknownDrill(_) => "unknown-drill",
            Self::UnknownReport(_) => "unknown-report",
            Self::UnknownJob(_) => "unknown-job",
            Self::NoRoute { .. } => "no-route",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::UnknownRegion { .. } => "unknown-region",
            Self::BadQuery(_) => "bad-query",
            Self::Running(_) => "already-running",
            Self::Internal(_) => "internal",
        }
    }

    /// The problem's short title: its code in words.
    fn title(&self) -> String {
        let words = self.code().replace('-', " ");
        let mut c = words.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    }

    /// From an error chain of the layers below (their `Display` names objects, not secrets).
    pub fn internal(e: &(dyn std::error::Error + 'static)) -> Self {
        Self::Internal(crate::error::chain(e))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadQuery(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({
            "type": format!("urn:dr:problem:{}", self.code()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.to_string(),
            "code": self.code(),
        });
        let mut r = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        match &self {
            // RFC 6750 §3: no credentials, or credentials that are not valid.
            Self::Unauthorized => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::InvalidToken => {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::RateLimited { retry_after } => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_answer_with_their_status_code_and_headers() {
        let r = ApiError::UnknownRegion {
            policy: "app".to_owned(),
            region: "../../etc".to_owned(),
            targets: "local, replica".to_owned(),
        };
        assert_eq!(
            r.to_string(),
            "query parameter `region`: policy app has no target `../../etc` (its targets: local, replica)"
        );
        let r = r.into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(ApiError::UnknownJob("7".into()).title(), "Unknown job");
        let r = ApiError::RateLimited { retry_after: 7 }.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
