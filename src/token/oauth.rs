//! Pleo's authorisation server: building the authorize URL, exchanging codes, refreshing.
//!
//! Built on the `oauth2` crate's typestate client (which encodes `client_secret_basic` as
//! RFC 6749 §2.3.1 requires) over our own reqwest client, so that the status of a failed token
//! request survives: a 4xx is Pleo's verdict on the grant, a 5xx, 429, timeout or network error is
//! a transient failure that must never end a session.

use std::{future::Future, pin::Pin, time::Duration};

use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, TokenResponse, TokenUrl,
    basic::{BasicClient, BasicErrorResponse},
};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;
use url::Url;

use crate::{
    config::Config,
    telemetry::{Call, CallResult},
};

#[cfg(test)]
mod tests;

type ConfiguredClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// A token response, reduced to what the gateway keeps.
#[derive(Debug)]
pub struct TokenSet {
    /// The new access token.
    pub access_token: SecretString,
    /// The new refresh token (Pleo always rotates it).
    pub refresh_token: Option<SecretString>,
    /// `expires_in`.
    pub expires_in: Option<Duration>,
    /// Granted scopes when the server says them.
    pub scopes: Option<Vec<String>>,
}

/// Why a token request failed, classified for the refresh rules (README, "Tokens and refresh"):
/// only [`TokenError::Rejected`] ends a session; every other failure keeps it and backs off.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The server answered 4xx: the code or refresh token is no good. Terminal for that grant.
    #[error("token endpoint rejected the request: {error}")]
    Rejected {
        /// OAuth error code (`invalid_grant`, …) or `http_<status>` when the body had none.
        error: String,
    },
    /// Network error, 5xx or 429: try again later, keep the session.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
    /// No answer within the timeout. The request may or may not have been processed.
    #[error("token endpoint timed out")]
    Timeout,
    /// A 2xx answer that is not a token response.
    #[error("token endpoint sent an invalid response: {0}")]
    InvalidResponse(String),
}

/// The transport error type of [`TokenHttp`]: failures the grant is not to blame for.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("{0}")]
    Network(String),
    #[error("timeout")]
    Timeout,
    #[error("HTTP {0}")]
    Status(u16),
}

/// reqwest wrapped for `oauth2`: turns 5xx/429/3xx into transport errors (so they are never read
/// as a verdict on the grant) and gives 4xx answers without a JSON error body one, so `oauth2`
/// reports them as server responses.
struct TokenHttp(reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for TokenHttp {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut request = reqwest::Request::try_from(request)
                .map_err(|e| TransportError::Network(e.to_string()))?;
            let call = Call::pleo("token", request.method());
            call.inject(request.headers_mut());
            let response = self.0.execute(request).instrument(call.span()).await;
            call.finish(CallResult::of(&response));
            let response = response.map_err(classify)?;
            let status = response.status();
            if status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status.is_redirection()
            {
                return Err(TransportError::Status(status.as_u16()));
            }
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(classify)?.to_vec();
            let body = if status.is_client_error() && !has_oauth_error(&body) {
                format!(r#"{{"error":"http_{}"}}"#, status.as_u16()).into_bytes()
            } else {
                body
            };
            let mut builder = http::Response::builder().status(status.as_u16());
            for (name, value) in &headers {
                if name != http::header::CONTENT_LENGTH && name != http::header::CONTENT_TYPE {
                    builder = builder.header(name, value);
                }
            }
            builder
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .map_err(|e| TransportError::Network(e.to_string()))
        })
    }
}

fn classify(e: reqwest::Error) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout
    } else if crate::tls::is_untrusted_certificate(&e) {
        TransportError::Network(format!(
            "{} ({})",
            crate::error::chain(&e),
            crate::tls::UNTRUSTED_HINT
        ))
    } else {
        // reqwest errors name the URL, never credentials or bodies.
        TransportError::Network(crate::error::chain(&e))
    }
}

fn has_oauth_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").is_some_and(|e| e.is_string()))
}

/// Pleo's authorisation server as the gateway uses it. Built once at start-up.
pub struct PleoOAuth {
    client: ConfiguredClient,
    http: TokenHttp,
    scopes: Vec<String>,
}

impl std::fmt::Debug for PleoOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PleoOAuth")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// What `/auth/login` needs to send the browser to Pleo.
#[derive(Debug)]
pub struct AuthorizeRequest {
    /// The full authorize URL.
    pub url: Url,
    /// The PKCE verifier to keep server-side until the callback.
    pub pkce_verifier: String,
}

impl PleoOAuth {
    /// Configures the client from `pleo.*` and `server.public_url`.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let pleo = &config.pleo;
        let mut client = BasicClient::new(ClientId::new(pleo.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(join(&pleo.auth_url, "oauth/authorize")?))
            .set_token_uri(TokenUrl::from_url(join(&pleo.auth_url, "oauth/token")?))
            .set_redirect_uri(RedirectUrl::from_url(config.redirect_uri()));
        if let Some(secret) = &pleo.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(pleo.request_timeout)
            .connect_timeout(pleo.connect_timeout)
            .user_agent(concat!("pleo-gateway/", env!("CARGO_PKG_VERSION")));
        let http = crate::tls::trust_in_reqwest(http, pleo.ca_file.as_ref())?.build()?;
        Ok(Self {
            client,
            http: TokenHttp(http),
            scopes: pleo.scopes.clone(),
        })
    }

    /// Builds the authorize URL with a fresh S256 challenge. `state` is chosen by the caller.
    pub fn authorize_url(&self, state: String, subject_hint: Option<&str>) -> AuthorizeRequest {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(|| CsrfToken::new(state))
            .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        if let Some(subject) = subject_hint {
            request = request.add_extra_param("urn_pleo_params_oauth_subject", subject.to_owned());
        }
        let (url, _) = request.url();
        AuthorizeRequest {
            url,
            pkce_verifier: verifier.secret().clone(),
        }
    }

    /// Exchanges an authorisation code (with its PKCE verifier) for tokens.
    pub async fn exchange_code(&self, code: &str, verifier: &str) -> Result<TokenSet, TokenError> {
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&self.http)
            .await;
        convert(response)
    }

    /// Spends a refresh token. Pleo rotates: on success the old pair is dead.
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenSet, TokenError> {
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let response = self
            .client
            .exchange_refresh_token(&token)
            .request_async(&self.http)
            .await;
        convert(response)
    }
}

/// The future a [`TokenEndpoint`] answers with.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<TokenSet, TokenError>> + Send + 'a>>;

/// The token endpoint as the refresh protocol (`crate::token::refresh`) sees it: spend a refresh
/// token, get a new pair or a classified [`TokenError`].
///
/// [`PleoOAuth`] is the real one. The seam exists so that unit tests can script the endpoint's
/// answers (a rotation, `invalid_grant`, a 503, a timeout, a slow answer) and check what the
/// protocol does with each, on paused time and without a server. A trait object rather than a
/// generic parameter, so `RefreshCoordinator` keeps one concrete type everywhere it is named;
/// the boxed future costs one allocation per refresh.
pub trait TokenEndpoint: Send + Sync + std::fmt::Debug {
    /// Spends `refresh_token`. On success the old pair is dead (Pleo rotates).
    fn refresh<'a>(&'a self, refresh_token: &'a SecretString) -> TokenFuture<'a>;
}

impl TokenEndpoint for PleoOAuth {
    fn refresh<'a>(&'a self, refresh_token: &'a SecretString) -> TokenFuture<'a> {
        Box::pin(PleoOAuth::refresh(self, refresh_token))
    }
}

fn join(base: &Url, path: &str) -> anyhow::Result<Url> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let with_slash = format!("{}/", base.path());
        base.set_path(&with_slash);
    }
    Ok(base.join(path)?)
}

type OAuthResult = Result<
    oauth2::basic::BasicTokenResponse,
    RequestTokenError<TransportError, BasicErrorResponse>,
>;

fn convert(response: OAuthResult) -> Result<TokenSet, TokenError> {
    match response {
        Ok(tokens) => Ok(TokenSet {
            access_token: SecretString::from(tokens.access_token().secret().clone()),
            refresh_token: tokens
                .refresh_token()
                .map(|t| SecretString::from(t.secret().clone())),
            expires_in: tokens.expires_in(),
            scopes: tokens
                .scopes()
                .map(|s| s.iter().map(|s| s.to_string()).collect()),
        }),
        Err(RequestTokenError::ServerResponse(e)) => Err(TokenError::Rejected {
            error: e.error().to_string(),
        }),
        Err(RequestTokenError::Request(TransportError::Timeout)) => Err(TokenError::Timeout),
        Err(RequestTokenError::Request(e)) => Err(TokenError::Unavailable(e.to_string())),
        // Only 2xx bodies reach parsing unconverted (see TokenHttp); never echo the body, it may
        // hold a token.
        Err(RequestTokenError::Parse(e, _)) => {
            Err(TokenError::InvalidResponse(e.path().to_string()))
        }
        Err(RequestTokenError::Other(e)) => Err(TokenError::InvalidResponse(e)),
    }
}
