//! The mock's bookkeeping: pending consent requests, authorisation codes, grants and tokens.
//!
//! A grant is what one successful code exchange creates; it owns exactly one live access token
//! and one live refresh token at a time. Rotation replaces both at once (Pleo: "All previous
//! tokens are immediately invalidated") and presenting a rotated refresh token again revokes the
//! whole grant, because a replayed refresh token means someone else may hold the family.
//! Everything here is synchronous; the caller holds the lock only for one call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{pkce, random_token, unix_now};

/// How long a consent page may sit before its Approve button stops working.
const PENDING_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a redeemed code is remembered past its expiry, so a replay can still revoke.
const USED_CODE_RETENTION: Duration = Duration::from_secs(10 * 60);
/// How long an expired access token is remembered, so the API can say "expired", not "unknown".
const EXPIRED_TOKEN_RETENTION: Duration = Duration::from_secs(60 * 60);
/// Refresh tokens are "valid for at least 60 days"; only introspection reports this.
const REFRESH_TOKEN_LIFETIME_SECS: u64 = 60 * 24 * 60 * 60;
/// Random bytes in codes and tokens: 256 bits, well above RFC 6749's 128-bit floor.
const TOKEN_BYTES: usize = 32;

/// A validated authorisation request, kept while the user decides and bound into the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: String,
    pub code_challenge: String,
    pub scopes: Vec<String>,
    pub subject: String,
}

/// The tokens handed out by a successful exchange or refresh.
#[derive(Debug, Clone)]
pub(super) struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub scopes: Vec<String>,
}

/// Who an access token speaks for; attached to API requests after the bearer check.
#[derive(Debug, Clone)]
pub(super) struct GrantView {
    pub grant_id: u64,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub subject: String,
}

/// What introspection reveals about an active token.
#[derive(Debug, Clone)]
pub(super) struct TokenInfo {
    pub grant: GrantView,
    pub iat: u64,
    pub exp: u64,
}

/// Why a code exchange or refresh failed; maps onto RFC 6749 §5.2 error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum GrantError {
    /// `invalid_grant` for any bad code, verifier, redirect URI or refresh token.
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// `invalid_grant` too, but the refresh token had been rotated: the grant is now revoked.
    #[error("refresh token has already been used; the grant has been revoked")]
    RefreshTokenReused,
    /// `invalid_scope`: a refresh asked for more than the grant holds.
    #[error("{0}")]
    InvalidScope(&'static str),
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AccessError {
    /// Never issued, rotated away or revoked.
    Unknown,
    /// Issued and not revoked, but past its lifetime.
    Expired,
}

struct PendingAuthorization {
    request: AuthorizationRequest,
    expires_at: Instant,
}

struct IssuedCode {
    request: AuthorizationRequest,
    expires_at: Instant,
    used: bool,
    /// The grant created from this code, revoked if the code is replayed.
    grant_id: Option<u64>,
}

struct Grant {
    client_id: String,
    scopes: Vec<String>,
    subject: String,
    active: bool,
    access_token: Option<String>,
}

struct AccessToken {
    grant_id: u64,
    iat: u64,
    exp: u64,
    expires_at: Instant,
}

struct RefreshToken {
    grant_id: u64,
    iat: u64,
    rotated: bool,
}

/// All OAuth state of the mock.
#[derive(Default)]
pub(super) struct GrantStore {
    pending: HashMap<String, PendingAuthorization>,
    codes: HashMap<String, IssuedCode>,
    grants: HashMap<u64, Grant>,
    access_tokens: HashMap<String, AccessToken>,
    // Rotated refresh tokens stay here (marked) for the life of the mock: reuse detection
    // needs to recognise them, and a test run never lives long enough for this to matter.
    refresh_tokens: HashMap<String, RefreshToken>,
    next_grant_id: u64,
}

impl GrantStore {
    /// Parks a validated request until the user approves or denies; returns its opaque id.
    pub fn park_pending(&mut self, request: AuthorizationRequest) -> String {
        self.purge_expired();
        let id = random_token(TOKEN_BYTES);
        let expires_at = later(Instant::now(), PENDING_TTL);
        self.pending.insert(
            id.clone(),
            PendingAuthorization {
                request,
                expires_at,
            },
        );
        id
    }

    /// Takes a parked request out (a consent decision is single use); `None` if unknown or stale.
    pub fn take_pending(&mut self, id: &str) -> Option<AuthorizationRequest> {
        let pending = self.pending.remove(id)?;
        (Instant::now() < pending.expires_at).then_some(pending.request)
    }

    /// Issues a single-use code bound to everything in `request`.
    pub fn issue_code(&mut self, request: AuthorizationRequest, ttl: Duration) -> String {
        self.purge_expired();
        let code = random_token(TOKEN_BYTES);
        let entry = IssuedCode {
            request,
            expires_at: later(Instant::now(), ttl),
            used: false,
            grant_id: None,
        };
        self.codes.insert(code.clone(), entry);
        code
    }

    /// Redeems a code for a new grant (RFC 6749 §4.1.3 and RFC 7636 §4.6).
    pub fn exchange_code(
        &mut self,
        client_id: &str,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        access_ttl: Duration,
    ) -> Result<IssuedTokens, GrantError> {
        let Some(entry) = self.codes.get_mut(code) else {
            return Err(GrantError::InvalidGrant("unknown authorization code"));
        };
        if entry.used {
            // RFC 6749 §4.1.2: a replayed code SHOULD revoke what was issued from it.
            if let Some(grant_id) = entry.grant_id {
                self.revoke_grant(grant_id);
            }
            return Err(GrantError::InvalidGrant(
                "authorization code has already been used",
            ));
        }
        // Any presentation burns the code, so a failed guess at the verifier cannot be retried.
        entry.used = true;
        if Instant::now() >= entry.expires_at {
            return Err(GrantError::InvalidGrant("authorization code has expired"));
        }
        if entry.request.client_id != client_id {
            return Err(GrantError::InvalidGrant(
                "authorization code was issued to another client",
            ));
        }
        if redirect_uri != Some(entry.request.redirect_uri.as_str()) {
            return Err(GrantError::InvalidGrant(
                "redirect_uri does not match the authorization request",
            ));
        }
        let verifier = code_verifier.ok_or(GrantError::InvalidGrant("code_verifier is missing"))?;
        if !pkce::verify_s256(verifier, &entry.request.code_challenge) {
            return Err(GrantError::InvalidGrant(
                "code_verifier does not match the code_challenge",
            ));
        }
        let request = entry.request.clone();
        let grant_id = self.next_grant_id;
        self.next_grant_id += 1;
        entry.grant_id = Some(grant_id);
        self.grants.insert(
            grant_id,
            Grant {
                client_id: request.client_id,
                scopes: request.scopes,
                subject: request.subject,
                active: true,
                access_token: None,
            },
        );
        self.issue_tokens(grant_id, access_ttl)
    }

    /// Rotates a grant's tokens given its current refresh token (RFC 6749 §6).
    pub fn refresh(
        &mut self,
        client_id: &str,
        refresh_token: &str,
        requested_scopes: Option<&[String]>,
        access_ttl: Duration,
    ) -> Result<IssuedTokens, GrantError> {
        self.purge_expired();
        let Some(entry) = self.refresh_tokens.get(refresh_token) else {
            return Err(GrantError::InvalidGrant("unknown refresh token"));
        };
        let (grant_id, rotated) = (entry.grant_id, entry.rotated);
        let Some(grant) = self.grants.get(&grant_id) else {
            return Err(GrantError::InvalidGrant("unknown refresh token"));
        };
        if grant.client_id != client_id {
            return Err(GrantError::InvalidGrant(
                "refresh token was issued to another client",
            ));
        }
        if rotated {
            self.revoke_grant(grant_id);
            return Err(GrantError::RefreshTokenReused);
        }
        if !grant.active {
            return Err(GrantError::InvalidGrant("refresh token has been revoked"));
        }
        if let Some(requested) = requested_scopes
            && !requested.iter().all(|scope| grant.scopes.contains(scope))
        {
            return Err(GrantError::InvalidScope(
                "requested scope exceeds the scope of the grant",
            ));
        }
        if let Some(entry) = self.refresh_tokens.get_mut(refresh_token) {
            entry.rotated = true;
        }
        self.issue_tokens(grant_id, access_ttl)
    }

    /// Checks a bearer token for the API.
    pub fn authenticate(&self, access_token: &str) -> Result<GrantView, AccessError> {
        let token = self
            .access_tokens
            .get(access_token)
            .ok_or(AccessError::Unknown)?;
        let grant = self
            .active_grant(token.grant_id)
            .ok_or(AccessError::Unknown)?;
        if Instant::now() >= token.expires_at {
            return Err(AccessError::Expired);
        }
        Ok(grant)
    }

    /// What introspection may say about `token` to `client_id`; `None` means `active: false`.
    pub fn introspect(&self, client_id: &str, token: &str) -> Option<TokenInfo> {
        let (grant_id, iat, exp) = if let Some(access) = self.access_tokens.get(token) {
            if Instant::now() >= access.expires_at {
                return None;
            }
            (access.grant_id, access.iat, access.exp)
        } else {
            let refresh = self.refresh_tokens.get(token).filter(|r| !r.rotated)?;
            let exp = refresh.iat.saturating_add(REFRESH_TOKEN_LIFETIME_SECS);
            (refresh.grant_id, refresh.iat, exp)
        };
        let grant = self.active_grant(grant_id)?;
        // "Only the client that obtained the token may introspect it."
        (grant.client_id == client_id).then_some(TokenInfo { grant, iat, exp })
    }

    /// Revokes a grant and all its tokens; returns whether it was still active.
    pub fn revoke_grant(&mut self, grant_id: u64) -> bool {
        let Some(grant) = self.grants.get_mut(&grant_id) else {
            return false;
        };
        let was_active = grant.active;
        grant.active = false;
        if let Some(access) = grant.access_token.take() {
            self.access_tokens.remove(&access);
        }
        was_active
    }

    /// Revokes every grant.
    pub fn revoke_all(&mut self) {
        let ids: Vec<u64> = self.grants.keys().copied().collect();
        for id in ids {
            self.revoke_grant(id);
        }
    }

    /// Makes every live access token expired now.
    pub fn expire_access_tokens(&mut self) {
        let now = Instant::now();
        let now_unix = unix_now();
        for token in self.access_tokens.values_mut() {
            token.expires_at = token.expires_at.min(now);
            token.exp = token.exp.min(now_unix);
        }
    }

    fn active_grant(&self, grant_id: u64) -> Option<GrantView> {
        let grant = self.grants.get(&grant_id).filter(|g| g.active)?;
        Some(GrantView {
            grant_id,
            client_id: grant.client_id.clone(),
            scopes: grant.scopes.clone(),
            subject: grant.subject.clone(),
        })
    }

    /// Replaces the grant's access token and adds a new current refresh token.
    fn issue_tokens(&mut self, grant_id: u64, ttl: Duration) -> Result<IssuedTokens, GrantError> {
        let grant = self
            .grants
            .get_mut(&grant_id)
            .ok_or(GrantError::InvalidGrant("unknown grant"))?;
        if let Some(old) = grant.access_token.take() {
            self.access_tokens.remove(&old);
        }
        let access_token = random_token(TOKEN_BYTES);
        let refresh_token = random_token(TOKEN_BYTES);
        let iat = unix_now();
        grant.access_token = Some(access_token.clone());
        let scopes = grant.scopes.clone();
        self.access_tokens.insert(
            access_token.clone(),
            AccessToken {
                grant_id,
                iat,
                exp: iat.saturating_add(ttl.as_secs()),
                expires_at: later(Instant::now(), ttl),
            },
        );
        self.refresh_tokens.insert(
            refresh_token.clone(),
            RefreshToken {
                grant_id,
                iat,
                rotated: false,
            },
        );
        Ok(IssuedTokens {
            access_token,
            refresh_token,
            expires_in: ttl.as_secs(),
            scopes,
        })
    }

    /// Lazily drops what can no longer matter; called on the write paths.
    fn purge_expired(&mut self) {
        let now = Instant::now();
        self.pending.retain(|_, p| now < p.expires_at);
        self.codes.retain(|_, c| {
            let retention = if c.used {
                USED_CODE_RETENTION
            } else {
                Duration::ZERO
            };
            now < later(c.expires_at, retention)
        });
        self.access_tokens
            .retain(|_, t| now < later(t.expires_at, EXPIRED_TOKEN_RETENTION));
    }
}

/// `instant + duration`, saturating far in the future instead of panicking on overflow
/// (a test may well configure `Duration::MAX` to mean "never").
fn later(instant: Instant, duration: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    instant
        .checked_add(duration)
        .or_else(|| instant.checked_add(CENTURY))
        .unwrap_or(instant)
}
