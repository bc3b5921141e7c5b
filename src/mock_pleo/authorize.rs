//! `GET /oauth/authorize` and the consent decision (RFC 6749 §4.1.1–4.1.2, RFC 7636 §4.3).
//!
//! Errors in `client_id` or `redirect_uri` get an HTML page: redirecting to an unverified URI
//! would make the server an open redirector (RFC 6749 §4.1.2.1). Every other error goes back to
//! the client's registered redirect URI with `error` and `state`.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use url::Url;

use super::MockPleo;
use super::consent::{consent_page, error_page};
use super::grants::AuthorizationRequest;
use super::pkce;

/// An authorisation error that is reported to the client through its redirect URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RedirectError {
    code: &'static str,
    description: &'static str,
}

impl RedirectError {
    const fn invalid_request(description: &'static str) -> Self {
        Self {
            code: "invalid_request",
            description,
        }
    }
}

/// The query string as name/value pairs, keeping duplicates so they can be refused.
struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    fn parse(query: &str) -> Self {
        Self(
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The single value of `name`; `Err` if it appears more than once (RFC 6749 §3.1).
    fn single(&self, name: &str) -> Result<Option<&str>, ()> {
        let mut values = self.0.iter().filter(|(n, _)| n == name);
        let first = values.next().map(|(_, v)| v.as_str());
        match values.next() {
            Some(_) => Err(()),
            None => Ok(first),
        }
    }

    fn has_duplicates(&self) -> bool {
        self.0
            .iter()
            .enumerate()
            .any(|(i, (name, _))| self.0[..i].iter().any(|(earlier, _)| earlier == name))
    }
}

/// `GET /oauth/authorize`: validates the request, then redirects with a code or shows consent.
pub(super) async fn authorize(State(mock): State<MockPleo>, RawQuery(query): RawQuery) -> Response {
    let params = QueryParams::parse(query.as_deref().unwrap_or(""));
    let client_id = match params.single("client_id") {
        Ok(Some(id)) => id,
        Ok(None) => return error_page(StatusCode::BAD_REQUEST, "client_id is missing."),
        Err(()) => return error_page(StatusCode::BAD_REQUEST, "client_id is repeated."),
    };
    let Some(client) = mock.client(client_id) else {
        return error_page(StatusCode::BAD_REQUEST, "Unknown client_id.");
    };
    let redirect_uri = match params.single("redirect_uri") {
        Ok(Some(uri)) => uri,
        Ok(None) => return error_page(StatusCode::BAD_REQUEST, "redirect_uri is missing."),
        Err(()) => return error_page(StatusCode::BAD_REQUEST, "redirect_uri is repeated."),
    };
    // Exact string comparison, no normalisation and no wildcards: that is what Pleo does and
    // what keeps codes from leaking to look-alike URIs.
    if !client.redirect_uris.iter().any(|uri| uri == redirect_uri) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri is not registered for this client.",
        );
    }
    let Ok(redirect) = Url::parse(redirect_uri) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The registered redirect_uri is not a valid URL.",
        );
    };
    // A repeated state is not echoed: the client could not tell which one it sent.
    let state = params.single("state").ok().flatten();
    let default_subject = &mock.inner.config.subject_urn;
    let request = match validate(&params, client_id, redirect_uri, default_subject) {
        Ok(request) => request,
        Err(error) => return redirect_error(redirect, error, state),
    };

    if mock.inner.config.auto_approve {
        let code = mock
            .lock()
            .grants
            .issue_code(request.clone(), mock.inner.config.code_ttl);
        return redirect_with_code(redirect, &code, &request.state);
    }
    let request_id = mock.lock().grants.park_pending(request.clone());
    consent_page(&mock.inner.config.application_name, &request, &request_id)
}

/// The form the consent page posts.
#[derive(Debug, Deserialize)]
pub(super) struct DecisionForm {
    request_id: String,
    decision: String,
}

/// `POST /oauth/authorize/decision`: the user's Approve or Deny on a parked request.
pub(super) async fn decide(
    State(mock): State<MockPleo>,
    form: Result<Form<DecisionForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return error_page(StatusCode::BAD_REQUEST, "Malformed consent decision.");
    };
    let approve = match form.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return error_page(StatusCode::BAD_REQUEST, "Unknown consent decision."),
    };
    let Some(request) = mock.lock().grants.take_pending(&form.request_id) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This authorisation request is unknown, already decided or expired. \
             Start again from the application.",
        );
    };
    let Ok(redirect) = Url::parse(&request.redirect_uri) else {
        return error_page(StatusCode::BAD_REQUEST, "Invalid redirect_uri.");
    };
    if !approve {
        let error = RedirectError {
            code: "access_denied",
            description: "The user denied the authorisation request",
        };
        return redirect_error(redirect, error, Some(&request.state));
    }
    let state = request.state.clone();
    let code = mock
        .lock()
        .grants
        .issue_code(request, mock.inner.config.code_ttl);
    redirect_with_code(redirect, &code, &state)
}

/// Checks everything after client and redirect URI, in the order RFC 6749 lists the errors.
fn validate(
    params: &QueryParams,
    client_id: &str,
    redirect_uri: &str,
    default_subject: &str,
) -> Result<AuthorizationRequest, RedirectError> {
    match params.single("response_type") {
        Ok(Some("code")) => {}
        Ok(Some(_)) => {
            return Err(RedirectError {
                code: "unsupported_response_type",
                description: "only response_type=code is supported",
            });
        }
        Ok(None) => return Err(RedirectError::invalid_request("response_type is missing")),
        Err(()) => return Err(RedirectError::invalid_request("response_type is repeated")),
    }
    if params.has_duplicates() {
        return Err(RedirectError::invalid_request("a parameter is repeated"));
    }
    let get = |name| params.single(name).ok().flatten().filter(|v| !v.is_empty());
    // RFC 6749 only recommends state; Pleo requires it, and so does the mock.
    let state = get("state").ok_or(RedirectError::invalid_request("state is required"))?;
    let challenge = get("code_challenge").ok_or(RedirectError::invalid_request(
        "code_challenge is required (PKCE)",
    ))?;
    // An absent method means `plain` (RFC 7636 §4.3), which Pleo rejects like an explicit one.
    if get("code_challenge_method") != Some("S256") {
        return Err(RedirectError::invalid_request(
            "code_challenge_method must be S256",
        ));
    }
    if !pkce::is_valid_s256_challenge(challenge) {
        return Err(RedirectError::invalid_request(
            "code_challenge must be 43 characters of base64url",
        ));
    }
    let scopes = parse_scopes(get("scope").unwrap_or(""))?;
    let subject = match get("urn_pleo_params_oauth_subject") {
        Some(subject) if is_subject_urn(subject) => subject,
        Some(_) => {
            return Err(RedirectError::invalid_request(
                "urn_pleo_params_oauth_subject must be a company or organisation URN",
            ));
        }
        None => default_subject,
    };
    Ok(AuthorizationRequest {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        state: state.to_owned(),
        code_challenge: challenge.to_owned(),
        scopes,
        subject: subject.to_owned(),
    })
}

/// Splits a space-delimited scope (RFC 6749 §3.3); empty or malformed is `invalid_scope`.
fn parse_scopes(scope: &str) -> Result<Vec<String>, RedirectError> {
    let invalid = |description| RedirectError {
        code: "invalid_scope",
        description,
    };
    if scope.is_empty() {
        return Err(invalid("scope is required"));
    }
    let mut scopes: Vec<String> = Vec::new();
    for token in scope.split(' ') {
        // scope-token = 1*( %x21 / %x23-5B / %x5D-7E ): printable ASCII minus `"` and `\`.
        let well_formed = !token.is_empty()
            && token
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
        if !well_formed {
            return Err(invalid("scope is malformed"));
        }
        if !scopes.iter().any(|s| s == token) {
            scopes.push(token.to_owned());
        }
    }
    Ok(scopes)
}

/// Whether `urn` names a Pleo company or organisation.
fn is_subject_urn(urn: &str) -> bool {
    ["urn:pleo:company:", "urn:pleo:organisation:"]
        .iter()
        .filter_map(|prefix| urn.strip_prefix(prefix))
        .any(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn redirect_with_code(mut redirect: Url, code: &str, state: &str) -> Response {
    redirect
        .query_pairs_mut()
        .append_pair("code", code)
        .append_pair("state", state);
    found(&redirect)
}

fn redirect_error(mut redirect: Url, error: RedirectError, state: Option<&str>) -> Response {
    {
        let mut query = redirect.query_pairs_mut();
        query
            .append_pair("error", error.code)
            .append_pair("error_description", error.description);
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    found(&redirect)
}

/// A 302 to `location`, the status RFC 6749 §4.1.2 uses in its examples.
fn found(location: &Url) -> Response {
    match HeaderValue::from_str(location.as_str()) {
        Ok(location) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => error_page(StatusCode::BAD_REQUEST, "Invalid redirect_uri."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_split_and_deduplicated() {
        assert_eq!(
            parse_scopes("users:read export-jobs:read users:read"),
            Ok(vec!["users:read".to_owned(), "export-jobs:read".to_owned()])
        );
        assert_eq!(parse_scopes("").map_err(|e| e.code), Err("invalid_scope"));
        assert_eq!(
            parse_scopes("a  b").map_err(|e| e.code),
            Err("invalid_scope")
        );
        assert_eq!(
            parse_scopes("a\"b").map_err(|e| e.code),
            Err("invalid_scope")
        );
    }

    #[test]
    fn subject_urns_are_recognised() {
        assert!(is_subject_urn(
            "urn:pleo:company:5b1d1c36-8f0e-4c3a-9a55-2f4b6f0e7d21"
        ));
        assert!(is_subject_urn("urn:pleo:organisation:abc"));
        assert!(!is_subject_urn("urn:pleo:company:"));
        assert!(!is_subject_urn("urn:pleo:user:abc"));
        assert!(!is_subject_urn("urn:pleo:company:a/b"));
    }

    #[test]
    fn repeated_parameters_are_detected() {
        let params = QueryParams::parse("a=1&b=2&a=3");
        assert!(params.has_duplicates());
        assert_eq!(params.single("a"), Err(()));
        assert_eq!(params.single("b"), Ok(Some("2")));
        assert_eq!(params.single("c"), Ok(None));
    }
}
