//! The HTML the mock shows a browser: the consent page and the error page.
//!
//! The consent form carries only the server-side id of the parked request, never the request
//! parameters, so nothing a browser (or an attacker) can edit changes what gets approved.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::grants::AuthorizationRequest;

/// Name of the hidden form field carrying the parked request's id.
const REQUEST_ID_FIELD: &str = "request_id";

/// Shared look of both pages: small, readable, no external resources.
const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f2ef;color:#1c1b1a;\
margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}\
main{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);\
padding:2rem 2.5rem;max-width:28rem}h1{font-size:1.3rem;margin-top:0}\
ul{padding-left:1.2rem}code{background:#f4f2ef;padding:.1rem .3rem;border-radius:4px}\
.actions{display:flex;gap:.75rem;margin-top:1.5rem}button{font:inherit;padding:.6rem 1.4rem;\
border-radius:8px;border:1px solid #1c1b1a;cursor:pointer}\
button.approve{background:#1c1b1a;color:#fff}button.deny{background:#fff}";

/// The consent page for a parked request.
pub(super) fn consent_page(
    application_name: &str,
    request: &AuthorizationRequest,
    request_id: &str,
) -> Response {
    let scopes: String = request
        .scopes
        .iter()
        .map(|scope| format!("<li><code>{}</code></li>", escape(scope)))
        .collect();
    let body = format!(
        "<h1>Authorise {app}</h1>\
         <p><strong>{app}</strong> (client <code>{client}</code>) asks for access to \
         <strong>{subject}</strong> with these permissions:</p>\
         <ul>{scopes}</ul>\
         <form method=\"post\" action=\"/oauth/authorize/decision\">\
         <input type=\"hidden\" name=\"{field}\" value=\"{id}\">\
         <div class=\"actions\">\
         <button class=\"approve\" type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
         <button class=\"deny\" type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
         </div></form>",
        app = escape(application_name),
        client = escape(&request.client_id),
        subject = escape(&request.subject),
        field = REQUEST_ID_FIELD,
        id = escape(request_id),
    );
    page(StatusCode::OK, "Authorise application", &body)
}

/// An error page; used when redirecting back would be unsafe (RFC 6749 §4.1.2.1).
pub(super) fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!("<h1>Authorisation failed</h1><p>{}</p>", escape(message));
    page(status, "Authorisation failed", &body)
}

/// Finds the parked request id in a consent page, so tests can "click" Approve or Deny by
/// posting `request_id=<id>&decision=approve|deny` to `/oauth/authorize/decision`.
pub fn consent_request_id(page: &str) -> Option<&str> {
    let marker = format!("name=\"{REQUEST_ID_FIELD}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    let len = page[start..].find('"')?;
    Some(&page[start..start + len])
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · Mock Pleo</title><style>{STYLE}</style></head>\
         <body><main>{body}</main></body></html>",
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    // Consent pages must not be cached or framed: a framed Approve button is clickjacking.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No `form-action`: browsers apply it to the redirect that follows the decision, which
    // goes to the client's origin and would be blocked.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

/// Escapes text for HTML element content and double-quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn consent_request_id_finds_the_hidden_field() {
        let html = "<form><input type=\"hidden\" name=\"request_id\" value=\"abc-123\"></form>";
        assert_eq!(consent_request_id(html), Some("abc-123"));
        assert_eq!(consent_request_id("<p>nothing</p>"), None);
    }
}
