//! The signed identity the app receives with every request (`X-Pleo-Identity`), the JWKS that
//! lets it check the signature, and the check the internal listener runs on assertions that
//! come back.
//!
//! `X-Pleo-Subject` tells the app who the user is, but anything that reaches the app's port
//! without passing through the gateway can send it too. The assertion cannot be forged without
//! the gateway's key: a compact JWS (EdDSA, Ed25519) with
//!
//! - `iss`: `server.public_url` (without trailing slash); `aud`: `[identity] audience`;
//! - `sub`: the Pleo subject URN; `scope`: the granted scopes, space-separated;
//! - `sid`: a reference to the session ([`reference`]), neither its id nor its store key;
//! - `iat`, `exp` (`[identity] assertion_ttl`, 60 s by default), `jti`; `kid` in the header.
//!
//! The app's server side may hand the assertion back to the internal listener to call Pleo
//! as that user ([`crate::internal`]); [`Identity::verify`] is that check. An assertion is
//! never a substitute for the cookie on the public listener.

pub mod jws;
pub mod keys;
pub mod reference;
mod reuse;

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use crate::{
    config::{Config, EncryptionKey, SigningKeyMaterial},
    session::{Session, SessionKey, id::random_token},
};
use jws::Claims;
use keys::SigningKeys;
use reference::SessionReferences;

/// The request header carrying the assertion to the app (and, optionally, back to the internal
/// listener).
pub const IDENTITY_HEADER: &str = "x-pleo-identity";

/// The subject URN in plain text: to the app and forward-auth callers with every request, and
/// from the app's server side naming the subject of a background call (internal listener).
pub const SUBJECT_HEADER: &str = "x-pleo-subject";

/// Clock skew tolerated when checking `exp` and `iat`, between replicas and the app.
pub const LEEWAY: Duration = Duration::from_secs(5);

/// Whether `value` is a Pleo subject URN as Pleo writes them: `urn:pleo:company:<uuid>` or
/// `urn:pleo:organisation:<uuid>` (hex digits and dashes, at most 64).
pub fn is_subject_urn(value: &str) -> bool {
    let id = value
        .strip_prefix("urn:pleo:company:")
        .or_else(|| value.strip_prefix("urn:pleo:organisation:"));
    id.is_some_and(|id| {
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    })
}

/// Signs assertions and checks them.
#[derive(Debug)]
pub struct Identity {
    keys: SigningKeys,
    references: SessionReferences,
    issuer: String,
    audience: String,
    ttl: Duration,
    recent: reuse::Recent,
}

/// Why an assertion was refused; said in the 401, which helps an app developer and tells an
/// attacker nothing they did not send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// Not a JWS, a header other than EdDSA with one of our `kid`s, or a bad signature.
    #[error("it is not a valid assertion signed by this gateway")]
    Invalid,
    /// Issued by another gateway (`iss`).
    #[error("it was issued by another gateway")]
    WrongIssuer,
    /// Meant for another audience (`aud`).
    #[error("it was issued for another audience")]
    WrongAudience,
    /// Past `exp` (plus [`LEEWAY`]), or issued in the future.
    #[error("it has expired")]
    Expired,
}

/// A checked assertion: its claims and the session it names.
#[derive(Clone, Debug)]
pub struct VerifiedAssertion {
    /// What the gateway signed.
    pub claims: Claims,
    /// The store key of the session (from `sid`).
    pub session: SessionKey,
}

impl Identity {
    /// Builds the signer from `[identity]`; session references are sealed with the session
    /// encryption keys `session_keys` (the ones in use, generated or configured).
    pub fn new(config: &Config, session_keys: &[EncryptionKey]) -> anyhow::Result<Self> {
        let materials = if config.identity.signing_keys.is_empty() {
            tracing::warn!(
                "identity.signing_keys is not set: a signing key was generated for this process. \
                 Fine for one replica; several replicas need a shared key (see `check-config`)"
            );
            vec![SigningKeyMaterial::generate()]
        } else {
            config.identity.signing_keys.clone()
        };
        let keys = SigningKeys::new(&materials)
            .ok_or_else(|| anyhow::anyhow!("identity.signing_keys: a key could not be loaded"))?;
        let references = SessionReferences::new(session_keys)
            .ok_or_else(|| anyhow::anyhow!("no session encryption key"))?;
        let issuer = config.issuer();
        let audience = config
            .identity
            .audience
            .clone()
            .unwrap_or_else(|| issuer.clone());
        Ok(Self {
            keys,
            references,
            issuer,
            audience,
            ttl: config.identity.assertion_ttl,
            recent: reuse::Recent::new(config.identity.assertion_ttl),
        })
    }

    /// The assertion for `session` at `now_ms`; `None` while its subject is unknown (nothing
    /// reaches the app then anyway).
    pub fn assertion(&self, session: &Session, now_ms: u64) -> Option<String> {
        let sub = session.data.subject.clone()?;
        let iat = now_ms / 1000;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub,
            scope: session.data.scopes.join(" "),
            sid: self.references.make(&session.key),
            iat,
            exp: iat + self.ttl.as_secs(),
            jti: random_token(),
        };
        Some(jws::sign(&self.keys, &claims))
    }

    /// [`assertion`](Self::assertion) as a header value, reused for the same session for a few
    /// seconds (see [`reuse`]) so a burst of requests costs one signature.
    pub fn header_value(&self, session: &Session, now_ms: u64) -> Option<HeaderValue> {
        let subject = session.data.subject.as_deref()?;
        let now_secs = now_ms / 1000;
        if let Some(value) = self.recent.get(session, subject, now_secs) {
            return Some(value);
        }
        let value = self
            .assertion(session, now_ms)
            .and_then(|token| HeaderValue::from_str(&token).ok())?;
        self.recent.put(session, subject, now_secs, &value);
        Some(value)
    }

    /// Checks an assertion handed back at `now_ms`: signature and header, issuer, audience,
    /// expiry; returns the session it names.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<VerifiedAssertion, AssertionError> {
        let claims = jws::verify(&self.keys, token).map_err(|_| AssertionError::Invalid)?;
        if claims.iss != self.issuer {
            return Err(AssertionError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(AssertionError::WrongAudience);
        }
        let now = now_ms / 1000;
        let leeway = LEEWAY.as_secs();
        if claims.exp.saturating_add(leeway) <= now || claims.iat > now.saturating_add(leeway) {
            return Err(AssertionError::Expired);
        }
        let session = self
            .references
            .open(&claims.sid)
            .ok_or(AssertionError::Invalid)?;
        Ok(VerifiedAssertion { claims, session })
    }

    /// The JWK Set of every configured key.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
    }
}

/// The answer of `GET /auth/jwks.json`: the public keys that verify `X-Pleo-Identity`.
/// Cacheable for a few minutes: a key is published before it signs (rotation), so a cached set
/// is never missing the signing key for longer than the operator waited between the two steps.
pub fn jwks_response(identity: &Identity) -> Response {
    let mut response = Json(identity.jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[cfg(test)]
mod tests;
