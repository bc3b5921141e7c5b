//! The mock's Pleo API: the bearer check and the endpoints a gateway test needs.
//!
//! Bearer tokens are accepted only in the `Authorization` header, as Pleo requires ("never
//! include access tokens in query parameters or request bodies").

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::MockPleo;
use super::grants::{AccessError, GrantView};

/// Largest page `/v2/employees` returns.
const MAX_PAGE_SIZE: usize = 100;

/// Why a request got 401; each has its own message, like Pleo's error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unauthorized {
    Missing,
    Malformed,
    Access(AccessError),
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let message = match self {
            Self::Missing => "Missing Authorization header",
            Self::Malformed => "Wrong format of the Authorization header; expected a Bearer token",
            Self::Access(AccessError::Expired) => "The JWT token has expired",
            Self::Access(AccessError::Unknown) => "The token is invalid or has been revoked",
        };
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pleo\", error=\"invalid_token\""),
            )],
            Json(json!({ "message": message })),
        )
            .into_response()
    }
}

/// Middleware on every API route: counts the request, checks the bearer token and hands the
/// grant to the handler as an extension.
pub(super) async fn require_bearer(
    State(mock): State<MockPleo>,
    mut request: Request,
    next: Next,
) -> Response {
    let checked = {
        let mut state = mock.lock();
        state.stats.api_requests += 1;
        if let Some(seconds) = state.api_rate_limited {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, HeaderValue::from(seconds))],
                Json(json!({ "message": "Too many requests (mock)" })),
            )
                .into_response();
        }
        let checked = bearer_token(request.headers()).and_then(|token| {
            state
                .grants
                .authenticate(token)
                .map_err(Unauthorized::Access)
        });
        if checked.is_err() {
            state.stats.api_unauthorized += 1;
        }
        checked
    };
    match checked {
        Ok(grant) => {
            request.extensions_mut().insert(grant);
            next.run(request).await
        }
        Err(reason) => reason.into_response(),
    }
}

/// The token of the single `Authorization: Bearer …` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, Unauthorized> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Unauthorized::Missing)?;
    if values.next().is_some() {
        return Err(Unauthorized::Malformed);
    }
    let (scheme, token) = value
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .ok_or(Unauthorized::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(Unauthorized::Malformed);
    }
    Ok(token)
}

/// `GET /v1/introspect`: who the token speaks for.
pub(super) async fn introspect(
    State(mock): State<MockPleo>,
    Extension(grant): Extension<GrantView>,
) -> Response {
    if let Some(status) = mock.introspect_failure() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (
            status,
            Json(json!({ "message": "introspection is failing (mock)" })),
        )
            .into_response();
    }
    Json(json!({
        "data": {
            "authMethod": "OAUTH2",
            "clientId": grant.client_id,
            "scope": grant.scopes.join(" "),
            "applicationName": mock.inner.config.application_name,
            "subjectURN": grant.subject,
        }
    }))
    .into_response()
}

/// Pagination parameters of `/v2/employees`.
#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    after: Option<String>,
}

/// `GET /v2/employees`: a fixed list of sample employees in Pleo's pagination envelope.
pub(super) async fn employees(
    Extension(grant): Extension<GrantView>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(page)) = query else {
        return bad_request("limit and offset must be non-negative integers");
    };
    let limit = page.limit.unwrap_or(MAX_PAGE_SIZE);
    if limit == 0 || limit > MAX_PAGE_SIZE {
        return bad_request("limit must be between 1 and 100");
    }
    let start = match (&page.after, page.offset) {
        (Some(cursor), _) => match decode_cursor(cursor) {
            Some(index) => index + 1,
            None => return bad_request("after is not a valid cursor"),
        },
        (None, offset) => offset.unwrap_or(0),
    };
    let company_id = grant.subject.strip_prefix("urn:pleo:company:");
    let all: Vec<Value> = EMPLOYEES
        .iter()
        .map(|(id, first, last, title)| {
            json!({
                "id": id,
                "firstName": first,
                "lastName": last,
                "email": format!("{}.{}@example.com", first.to_lowercase(), last.to_lowercase()),
                "jobTitle": title,
                "companyId": company_id,
                "status": "ACTIVE",
            })
        })
        .collect();
    let end = start.saturating_add(limit).min(all.len());
    let data = all.get(start..end).unwrap_or_default();
    let cursor = |index: usize| (!data.is_empty()).then(|| encode_cursor(index));
    Json(json!({
        "data": data,
        "pagination": {
            "hasPreviousPage": start > 0 && !all.is_empty(),
            "hasNextPage": end < all.len(),
            "currentRequestPagination": {
                "before": null,
                "after": page.after,
                "offset": page.offset,
                "limit": limit,
                "sortingKeys": ["lastName"],
                "sortingOrder": ["ASC"],
            },
            "startCursor": cursor(start),
            "endCursor": cursor(end.saturating_sub(1)),
            "total": all.len(),
        }
    }))
    .into_response()
}

/// `DELETE /v1/installations/me`: uninstalls, revoking every token of the caller's grant.
pub(super) async fn delete_installation(
    State(mock): State<MockPleo>,
    Extension(grant): Extension<GrantView>,
) -> Response {
    let mut state = mock.lock();
    if state.grants.revoke_grant(grant.grant_id) {
        state.stats.installations_deleted += 1;
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "message": "Installation not found" })),
        )
            .into_response()
    }
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "message": message }))).into_response()
}

/// Cursors are opaque to clients; here they just wrap the row index.
fn encode_cursor(index: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("employee:{index}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    raw.strip_prefix("employee:")?.parse().ok()
}

/// Sample employees: id, first name, last name, job title.
const EMPLOYEES: [(&str, &str, &str, &str); 8] = [
    (
        "0f8e2c1a-6b9d-4e3f-8a71-2c5d9e4b1a01",
        "Astrid",
        "Lindqvist",
        "Finance Manager",
    ),
    (
        "1a7d3b2c-5e8f-4a60-9b82-3d6e0f5c2b12",
        "Jonas",
        "Berg",
        "Software Engineer",
    ),
    (
        "2b6c4a3d-4f7e-4b51-8c93-4e7f1a6d3c23",
        "Maria",
        "Fernandes",
        "Head of Operations",
    ),
    (
        "3c5b5d4e-3a6f-4c42-9da4-5f8a2b7e4d34",
        "Oliver",
        "Hansen",
        "Account Executive",
    ),
    (
        "4d4a6e5f-2b5a-4d33-8eb5-6a9b3c8f5e45",
        "Priya",
        "Raman",
        "Product Designer",
    ),
    (
        "5e396f6a-1c4b-4e24-9fc6-7bac4d9a6f56",
        "Lukas",
        "Schmidt",
        "Controller",
    ),
    (
        "6f287a7b-0d3c-4f15-8ad7-8cbd5eab7a67",
        "Sofie",
        "Nielsen",
        "Office Manager",
    ),
    (
        "7a198b8c-9e2d-4a06-9be8-9dce6fbc8b78",
        "Tomas",
        "Oliveira",
        "Data Analyst",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(5)), Some(5));
        assert_eq!(decode_cursor("not a cursor"), None);
    }

    #[test]
    fn bearer_token_requires_the_bearer_scheme() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(Unauthorized::Missing));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), Err(Unauthorized::Malformed));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Ok("abc"));
    }
}
