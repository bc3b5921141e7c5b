//! The one error type request handlers return, and how each case becomes an HTTP response.
//!
//! Use [`GatewayError`] in every handler: it carries an explicit status, a stable machine-readable
//! code and a message that is safe to show to the caller. Internals (Redis errors, token-endpoint
//! bodies) are logged here, once, and never put in a response. Browsers that navigated to a failing
//! URL get the same information as an HTML page: see [`render_error_page`].

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

mod html;

pub use html::{escape_html, is_navigation, redirect, render_error_page};

/// Everything a request can fail with, each mapped to one status below.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No live session for this request.
    #[error("you are not logged in")]
    NotAuthenticated {
        /// Where to send the user to log in.
        login_url: String,
    },
    /// The session existed but its grant is gone (refresh rejected, revoked): log in again.
    #[error("your Pleo session has ended; log in again")]
    SessionEnded {
        /// Where to send the user to log in.
        login_url: String,
        /// `Set-Cookie` that expires the dead session's cookie (the session is gone
        /// server-side, so the browser need not keep sending it).
        clear_cookie: HeaderValue,
    },
    /// The internal listener got neither an identity assertion nor a service token.
    #[error(
        "this listener needs the identity assertion the app received (Authorization: Bearer or X-Pleo-Identity), or a service token with X-Pleo-Subject"
    )]
    CredentialsMissing,
    /// An identity assertion was forged, altered, expired or meant for someone else.
    #[error("the identity assertion was refused: {0}")]
    AssertionRefused(String),
    /// The session an assertion names has ended (logged out, expired, disconnected, or its
    /// grant rejected by Pleo).
    #[error("the session this identity assertion was issued for has ended")]
    AssertionSessionEnded,
    /// A bearer token on the internal listener that is neither an assertion nor a configured
    /// service token (or background access is off).
    #[error("the service token is not valid")]
    ServiceTokenInvalid,
    /// Background access for a subject that has no grant (never logged in since background
    /// access was enabled, revoked, disconnected, or rejected by Pleo).
    #[error(
        "no background grant for {subject}: someone from it must log in through the gateway (again)"
    )]
    NoBackgroundGrant {
        /// The subject URN asked for (validated before it gets here).
        subject: String,
    },
    /// An unsafe method came without the `X-CSRF` header.
    #[error("this request needs the X-CSRF header (any non-empty value)")]
    CsrfHeaderMissing,
    /// The `state` of a callback is unknown, expired or already used.
    #[error("this login attempt has expired or was already used; start the login again")]
    LoginStateInvalid,
    /// Pleo (or the user) refused the authorisation request.
    #[error("Pleo did not authorise the login: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    AuthorizationRefused {
        /// The OAuth error code from the callback, e.g. `access_denied`.
        error: String,
        /// The optional human description Pleo sent.
        description: Option<String>,
    },
    /// The callback was missing parameters or had malformed ones.
    #[error("{0}")]
    BadRequest(String),
    /// Pleo's token endpoint rejected the code exchange.
    #[error("Pleo rejected the login ({0}); start the login again")]
    TokenExchangeRejected(String),
    /// Pleo's token endpoint or API could not be reached or failed transiently.
    #[error("Pleo is not reachable right now; try again shortly")]
    PleoUnavailable {
        /// How long the caller should wait before retrying.
        retry_after: Duration,
    },
    /// The Pleo API could not be reached or answered garbage.
    #[error("Pleo could not be reached")]
    PleoUnreachable,
    /// Pleo did not answer within the configured timeout.
    #[error("Pleo did not answer in time; try again shortly")]
    PleoTimeout,
    /// The app behind the gateway (`proxy.upstream`) could not be reached or broke off.
    #[error("the app behind the gateway could not be reached")]
    UpstreamUnreachable,
    /// The app behind the gateway did not answer within `proxy.upstream_timeout`.
    #[error("the app behind the gateway did not answer in time; try again shortly")]
    UpstreamTimeout,
    /// A WebSocket upgrade whose `Origin` is not the gateway's public origin.
    #[error("WebSocket connections are only accepted from the gateway's own origin")]
    OriginNotAllowed,
    /// The session store (Redis) failed; the session itself is untouched.
    #[error("the session store is not reachable right now; try again shortly")]
    StoreUnavailable,
    /// Too many login or callback requests from this client, or from everyone at once.
    #[error("too many login attempts; try again shortly")]
    RateLimited {
        /// When the next attempt will be accepted.
        retry_after: Duration,
    },
    /// The shared budget of calls to Pleo (`pleo.rate_limit_per_minute`) has no slot for this
    /// call soon enough; it never reached Pleo.
    #[error("too many calls to Pleo right now; try again shortly")]
    PleoRateBudget {
        /// When a call would be admitted again.
        retry_after: Duration,
    },
    /// The client did not send its request body within `proxy.body_timeout`.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The request body was not valid HTTP framing (e.g. a malformed chunk).
    #[error("the request body is malformed")]
    BodyMalformed,
    /// Every connection to the app allowed by `proxy.upstream_max_connections` stayed busy.
    #[error("the app behind the gateway is busy; try again shortly")]
    UpstreamBusy,
    /// Who the session belongs to could not be confirmed with Pleo yet, so nothing may be
    /// served on its behalf to the app.
    #[error(
        "the company this session belongs to could not be confirmed with Pleo yet; try again shortly"
    )]
    SubjectUnknown {
        /// When the next confirmation attempt is due.
        retry_after: Duration,
    },
    /// The request body exceeded `proxy.max_body_bytes`.
    #[error("the request body is larger than the gateway accepts")]
    BodyTooLarge,
    /// No route.
    #[error("not found")]
    NotFound,
    /// The route exists, but not for this method.
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// A bug or an impossible state; details are logged, never returned.
    #[error("internal error")]
    Internal(String),
}

/// `Query<T>` whose rejection is a [`GatewayError`] (JSON or HTML like every other error)
/// instead of axum's plain-text body.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for QueryParams<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(GatewayError::BadRequest(format!(
                "the query string is not valid: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The JSON error body every endpoint uses: `{"error": "...", "message": "..."}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    /// Stable, machine-readable code.
    pub error: &'static str,
    /// A sentence for humans.
    pub message: String,
    /// For 401s: where to log in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_url: Option<String>,
}

/// How long clients are told to wait after a transient store failure.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(2);

impl GatewayError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotAuthenticated { .. } | Self::SessionEnded { .. } => StatusCode::UNAUTHORIZED,
            Self::CredentialsMissing
            | Self::AssertionRefused(_)
            | Self::AssertionSessionEnded
            | Self::ServiceTokenInvalid
            | Self::NoBackgroundGrant { .. } => StatusCode::UNAUTHORIZED,
            Self::CsrfHeaderMissing | Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::LoginStateInvalid | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::AuthorizationRefused { error, .. } if error == "access_denied" => {
                StatusCode::FORBIDDEN
            }
            Self::AuthorizationRefused { .. } => StatusCode::BAD_REQUEST,
            Self::TokenExchangeRejected(_) => StatusCode::BAD_GATEWAY,
            Self::PleoUnavailable { .. } | Self::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::PleoTimeout | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::PleoUnreachable | Self::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } | Self::PleoRateBudget { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyMalformed => StatusCode::BAD_REQUEST,
            Self::UpstreamBusy | Self::SubjectUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code put in the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAuthenticated { .. } => "not_authenticated",
            Self::SessionEnded { .. } => "session_ended",
            Self::CredentialsMissing => "credentials_missing",
            Self::AssertionRefused(_) => "invalid_assertion",
            Self::AssertionSessionEnded => "session_ended",
            Self::ServiceTokenInvalid => "invalid_service_token",
            Self::NoBackgroundGrant { .. } => "no_background_grant",
            Self::CsrfHeaderMissing => "csrf_header_missing",
            Self::LoginStateInvalid => "invalid_state",
            Self::AuthorizationRefused { error, .. } if error == "access_denied" => "access_denied",
            Self::AuthorizationRefused { .. } => "authorization_failed",
            Self::BadRequest(_) => "bad_request",
            Self::TokenExchangeRejected(_) => "token_exchange_failed",
            Self::PleoUnavailable { .. } => "pleo_unavailable",
            Self::PleoTimeout => "pleo_timeout",
            Self::PleoUnreachable => "pleo_unreachable",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::StoreUnavailable => "session_store_unavailable",
            Self::BodyTooLarge => "body_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::PleoRateBudget { .. } => "pleo_rate_limited",
            Self::BodyTimeout => "body_timeout",
            Self::BodyMalformed => "body_malformed",
            Self::UpstreamBusy => "upstream_busy",
            Self::SubjectUnknown { .. } => "subject_unknown",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Internal(_) => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::PleoUnavailable { retry_after }
            | Self::RateLimited { retry_after }
            | Self::PleoRateBudget { retry_after }
            | Self::SubjectUnknown { retry_after } => Some(*retry_after),
            Self::UpstreamBusy => Some(Duration::from_secs(1)),
            Self::StoreUnavailable => Some(STORE_RETRY_AFTER),
            Self::PleoTimeout | Self::UpstreamTimeout => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The message shown to the caller. Internal details never appear here.
    fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "the gateway failed to handle this request".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Log in one place. Client mistakes are not worth more than debug; anything the operator
        // must look at is warn/error. Messages here never contain tokens or secrets: the variants
        // that carry text only ever carry our own descriptions.
        match &self {
            Self::Internal(detail) => tracing::error!(error.detail = %detail, "internal error"),
            e if status.is_server_error() => tracing::warn!(error.code = e.code(), "{e}"),
            e => tracing::debug!(error.code = e.code(), "{e}"),
        }
        let login_url = match &self {
            Self::NotAuthenticated { login_url } | Self::SessionEnded { login_url, .. } => {
                Some(login_url.clone())
            }
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.public_message(),
            login_url,
        };
        let mut response = (status, Json(body.clone())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(after) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                // Rounded up: a client that waits the advertised time is never early.
                HeaderValue::from((after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1)),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            // The internal listener's callers authenticate with a bearer token, browsers with
            // the cookie.
            let scheme = match &self {
                Self::NotAuthenticated { .. } | Self::SessionEnded { .. } => {
                    "Cookie realm=\"pleo-gateway\""
                }
                _ => "Bearer realm=\"pleo-gateway-internal\"",
            };
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        if let Self::SessionEnded { clear_cookie, .. } = &self {
            headers.append(header::SET_COOKIE, clear_cookie.clone());
        }
        response.extensions_mut().insert(body);
        response
    }
}

/// Whether `T` is anywhere in the error's chain of causes (a body limit hit deep inside a
/// client's error, say).
pub fn caused_by<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<T>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error and its causes, joined by `: `, for logs (a reqwest error's own text stops at
/// "error sending request"; the reason, such as an untrusted certificate, is in its causes).
/// A cause whose text its parent already ends with is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_carry_retry_after_and_never_internal_details() {
        let response = GatewayError::StoreUnavailable.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let body = GatewayError::Internal("redis said secret-thing".into()).public_message();
        assert!(!body.contains("secret-thing"));
    }
}
