//! The error responses a browser sees: an HTML page instead of JSON when a person navigated to
//! the failing URL, and the plain redirects the login flow answers with.

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::ErrorBody;

/// True when the request is a top-level browser navigation, which should see HTML rather than
/// JSON. `Sec-Fetch-Mode`/`Sec-Fetch-Dest` decide when present (all current browsers send them);
/// older clients are judged by whether `Accept` prefers `text/html`.
pub fn is_navigation(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(mode) = get("sec-fetch-mode") {
        return mode.eq_ignore_ascii_case("navigate")
            && get("sec-fetch-dest").is_none_or(|d| d.eq_ignore_ascii_case("document"));
    }
    get("accept").is_some_and(prefers_html)
}

/// Whether an `Accept` header lists `text/html` ahead of JSON (or without JSON at all).
fn prefers_html(accept: &str) -> bool {
    let position = |needle: &str| accept.find(needle);
    match (position("text/html"), position("application/json")) {
        (Some(html), Some(json)) => html < json,
        (Some(_), None) => true,
        _ => false,
    }
}

/// For a navigation ([`is_navigation`], decided on the request): an error response's JSON body
/// becomes a small HTML page carrying the same message, so a person sees a readable page
/// instead of raw JSON. Other responses pass unchanged. Applied by the edge layer (`edge.rs`).
pub fn render_error_page(response: Response) -> Response {
    let Some(body) = response.extensions().get::<ErrorBody>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let page = error_page(parts.status, &body);
    Response::from_parts(parts, Body::from(page))
}

/// The HTML error page. Every interpolated value is escaped.
fn error_page(status: StatusCode, body: &ErrorBody) -> String {
    let login = body
        .login_url
        .as_deref()
        .map(|url| format!(r#"<p><a href="{}">Log in</a></p>"#, escape_html(url)))
        .unwrap_or_else(|| r#"<p><a href="/auth/login">Start again</a></p>"#.to_owned());
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}\
         code{{background:#f3f3f3;padding:0 .3em}}</style></head><body>\
         <h1>{title}</h1><p>{message}</p><p>Error code: <code>{code}</code></p>{login}</body></html>",
        status = status.as_u16(),
        title = escape_html(status.canonical_reason().unwrap_or("Error")),
        message = escape_html(&body.message),
        code = escape_html(body.error),
    )
}

/// A 302 to `location` that no cache keeps.
pub fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Escapes the five HTML-significant characters.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as headers;

    #[test]
    fn navigation_is_detected_from_fetch_metadata_then_accept() {
        assert!(is_navigation(&headers(&[
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document")
        ])));
        assert!(!is_navigation(&headers(&[
            ("sec-fetch-mode", "cors"),
            ("accept", "text/html")
        ])));
        assert!(!is_navigation(&headers(&[
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "iframe")
        ])));
        assert!(is_navigation(&headers(&[(
            "accept",
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )])));
        assert!(!is_navigation(&headers(&[(
            "accept",
            "application/json, text/html"
        )])));
        assert!(!is_navigation(&headers(&[])));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
