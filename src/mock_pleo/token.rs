//! `POST /oauth/token` and `POST /oauth/token/introspect`, with client authentication.
//!
//! Confidential clients authenticate only with HTTP Basic (`client_secret_basic`, as Pleo
//! requires); a secret in the body is refused rather than ignored, so a gateway that leaks its
//! secret into request bodies (and logs) fails here instead of in production.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::grants::{GrantError, IssuedTokens};
use super::{MockClient, MockPleo};

/// An RFC 6749 §5.2 error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
        }
    }

    fn invalid_request(description: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client(description: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }
}

impl From<GrantError> for OAuthError {
    fn from(error: GrantError) -> Self {
        let code = match error {
            GrantError::InvalidGrant(_) | GrantError::RefreshTokenReused => "invalid_grant",
            GrantError::InvalidScope(_) => "invalid_scope",
        };
        Self::new(StatusCode::BAD_REQUEST, code, error.to_string())
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "error_description": self.description });
        let mut response = (self.status, no_store(), Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2: a 401 for invalid_client names the scheme the client must use.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pleo\""),
            );
        }
        response
    }
}

/// A form-encoded request body with each parameter at most once (RFC 6749 §3.2).
struct TokenForm(HashMap<String, String>);

impl TokenForm {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let form_encoded = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| {
                mime.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_encoded {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let mut params = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(body) {
            if params
                .insert(name.into_owned(), value.into_owned())
                .is_some()
            {
                return Err(OAuthError::invalid_request("a parameter is repeated"));
            }
        }
        Ok(Self(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// `POST /oauth/token`.
pub(super) async fn token(
    State(mock): State<MockPleo>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (failure, delay) = {
        let mut state = mock.lock();
        state.stats.token_requests += 1;
        (state.token_failure, state.token_delay)
    };
    let response = match failure {
        Some(status) => injected_failure(status),
        None => match exchange(&mock, &headers, &body) {
            Ok(tokens) => token_response(&tokens),
            Err(error) => error.into_response(),
        },
    };
    // The work is done before the delay: a client that times out has still consumed its
    // refresh token, exactly like a response lost on the way back.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

/// `POST /oauth/token/introspect` (RFC 7662), answering only the client that holds the token.
pub(super) async fn introspect(
    State(mock): State<MockPleo>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match TokenForm::parse(&headers, &body) {
        Ok(form) => form,
        Err(error) => return error.into_response(),
    };
    let client = match authenticate_client(&mock, &headers, &form) {
        Ok(client) => client,
        Err(error) => return error.into_response(),
    };
    let Some(token) = form.get("token") else {
        return OAuthError::invalid_request("token is missing").into_response();
    };
    let info = mock.lock().grants.introspect(&client.client_id, token);
    let body = match info {
        Some(info) => json!({
            "active": true,
            "sub": info.grant.subject,
            "exp": info.exp,
            "iat": info.iat,
            "client_id": info.grant.client_id,
            "scope": info.grant.scopes.join(" "),
            "urn:pleo:params:oauth:subject_urn": info.grant.subject,
        }),
        None => json!({ "active": false }),
    };
    (no_store(), Json(body)).into_response()
}

/// Runs one token request; counts outcomes in the stats.
fn exchange(mock: &MockPleo, headers: &HeaderMap, body: &[u8]) -> Result<IssuedTokens, OAuthError> {
    let form = TokenForm::parse(headers, body)?;
    let is_refresh = form.get("grant_type") == Some("refresh_token");
    let result = authenticate_client(mock, headers, &form)
        .and_then(|client| run_grant(mock, &client.client_id, &form));
    if is_refresh && result.is_err() {
        mock.lock().stats.refresh_failures += 1;
    }
    result
}

fn run_grant(
    mock: &MockPleo,
    client_id: &str,
    form: &TokenForm,
) -> Result<IssuedTokens, OAuthError> {
    match form.get("grant_type") {
        Some("authorization_code") => {
            let code = form
                .get("code")
                .ok_or_else(|| OAuthError::invalid_request("code is missing"))?;
            let mut state = mock.lock();
            let ttl = state.access_token_ttl;
            let tokens = state.grants.exchange_code(
                client_id,
                code,
                form.get("redirect_uri"),
                form.get("code_verifier"),
                ttl,
            )?;
            state.stats.authorization_code_grants += 1;
            Ok(tokens)
        }
        Some("refresh_token") => {
            let refresh_token = form
                .get("refresh_token")
                .ok_or_else(|| OAuthError::invalid_request("refresh_token is missing"))?;
            let scopes: Option<Vec<String>> = form
                .get("scope")
                .map(|scope| scope.split(' ').map(str::to_owned).collect());
            let mut state = mock.lock();
            let ttl = state.access_token_ttl;
            let result = state
                .grants
                .refresh(client_id, refresh_token, scopes.as_deref(), ttl);
            match &result {
                Ok(_) => state.stats.refresh_token_grants += 1,
                Err(GrantError::RefreshTokenReused) => state.stats.reuse_detections += 1,
                Err(_) => {}
            }
            Ok(result?)
        }
        Some(_) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        )),
        None => Err(OAuthError::invalid_request("grant_type is missing")),
    }
}

/// Identifies the client: HTTP Basic for confidential clients, `client_id` alone for public ones.
fn authenticate_client<'m>(
    mock: &'m MockPleo,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<&'m MockClient, OAuthError> {
    if form.get("client_secret").is_some() {
        return Err(OAuthError::invalid_client(
            "client_secret in the request body is not accepted; use HTTP Basic authentication",
        ));
    }
    let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
    let authorization = authorizations.next();
    if authorizations.next().is_some() {
        return Err(OAuthError::invalid_request("repeated Authorization header"));
    }
    let Some(authorization) = authorization else {
        let client_id = form
            .get("client_id")
            .ok_or_else(|| OAuthError::invalid_client("client authentication is required"))?;
        let client = mock
            .client(client_id)
            .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
        if client.client_secret.is_some() {
            return Err(OAuthError::invalid_client(
                "confidential clients must authenticate with HTTP Basic",
            ));
        }
        return Ok(client);
    };
    let (client_id, secret) = parse_basic(authorization)
        .ok_or_else(|| OAuthError::invalid_client("malformed Basic authorization"))?;
    // Sending client_id in the body as well is tolerated only if it names the same client.
    if form.get("client_id").is_some_and(|id| id != client_id) {
        return Err(OAuthError::invalid_client(
            "client_id in the body does not match the Basic credentials",
        ));
    }
    let client = mock
        .client(&client_id)
        .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    match &client.client_secret {
        Some(expected) if *expected == secret => Ok(client),
        Some(_) => Err(OAuthError::invalid_client("wrong client secret")),
        None => Err(OAuthError::invalid_client(
            "public clients do not authenticate; send client_id in the body",
        )),
    }
}

/// Decodes `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(credentials.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_urldecode(id)?, form_urldecode(secret)?))
}

/// Reverses application/x-www-form-urlencoded encoding; `None` on a broken `%` escape.
fn form_urldecode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                // Check the digits first: from_str_radix would also accept a sign ("%+1").
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The RFC 6749 §5.1 success response.
fn token_response(tokens: &IssuedTokens) -> Response {
    let body = json!({
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in,
        "refresh_token": tokens.refresh_token,
        "scope": tokens.scopes.join(" "),
    });
    (no_store(), Json(body)).into_response()
}

/// What `/oauth/token` answers while a failure is injected; no grant is touched.
fn injected_failure(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = match status.as_u16() {
        400 => "invalid_grant",
        401 => "invalid_client",
        503 => "temporarily_unavailable",
        500..=599 => "server_error",
        _ => "invalid_request",
    };
    OAuthError::new(status, code, "failure injected by the mock").into_response()
}

/// Token responses carry secrets and must never be cached (RFC 6749 §5.1).
fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).unwrap()
    }

    #[test]
    fn basic_credentials_are_form_urldecoded() {
        assert_eq!(
            parse_basic(&basic("my%3Aclient:s%2Bcret+x%25")),
            Some(("my:client".to_owned(), "s+cret x%".to_owned()))
        );
    }

    #[test]
    fn malformed_basic_credentials_are_rejected() {
        assert_eq!(parse_basic(&basic("no-colon")), None);
        assert_eq!(parse_basic(&basic("id:bad%zz")), None);
        assert_eq!(parse_basic(&basic("id:trunc%4")), None);
        assert_eq!(parse_basic(&basic("id:sign%+1")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer abc")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
    }
}
