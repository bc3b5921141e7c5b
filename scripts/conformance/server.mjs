// An independent OAuth 2.0 authorisation server (panva's oidc-provider) configured like Pleo,
// plus a tiny "Pleo API" that checks bearer tokens with the provider's introspection endpoint.
//
// Environment (all required unless a default is shown):
//   PROVIDER_PORT          port of the authorisation server (issuer http://127.0.0.1:PORT)
//   API_PORT               port of the echo API (and of /__conformance/* for the driver)
//   REDIRECT_URI           the one registered redirect_uri (the gateway's /auth/callback)
//   CLIENT_ID, CLIENT_SECRET
//   ACCESS_TOKEN_TTL       seconds, default 30
//
// Prints one JSON line per event on stdout; the first is {"ready":true,...}.

import { createHash } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is required`);
  return value;
};

const PROVIDER_PORT = Number(env('PROVIDER_PORT'));
const API_PORT = Number(env('API_PORT'));
const REDIRECT_URI = env('REDIRECT_URI');
const CLIENT_ID = env('CLIENT_ID');
const CLIENT_SECRET = env('CLIENT_SECRET');
const ACCESS_TOKEN_TTL = Number(env('ACCESS_TOKEN_TTL', '30'));
const ISSUER = `http://127.0.0.1:${PROVIDER_PORT}`;
const SCOPES = ['users:read', 'export-jobs:read', 'export-jobs:write', 'test:test'];

const log = (obj) => process.stdout.write(`${JSON.stringify({ t: new Date().toISOString(), ...obj })}\n`);

// Pleo's subject is a company URN; derive a stable UUID-shaped id from the account id.
const companyUrn = (accountId) => {
  const h = createHash('sha256').update(String(accountId)).digest('hex');
  return `urn:pleo:company:${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
};

// What the driver asserts on.
const stats = {
  events: {},
  authorizeRequests: [], // query parameters the gateway put on /oauth/authorize
  tokenRequests: [], // how the gateway called /oauth/token (never token values)
  apiRequests: [], // what reached the echo API
};
// Token values, kept out of /__conformance/stats.
const secrets = { consumedRefreshTokens: [], lastRefreshTokenIssued: undefined };
const count = (name) => { stats.events[name] = (stats.events[name] ?? 0) + 1; };
const fp = (token) => (token ? createHash('sha256').update(token).digest('hex').slice(0, 12) : null);

const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT_URI],
    scope: SCOPES.join(' '),
  }],
  // Pleo: code flow only; confidential clients authenticate with client_secret_basic only.
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic'],
  routes: {
    authorization: '/oauth/authorize',
    token: '/oauth/token',
    introspection: '/oauth/token/introspect',
  },
  // Pleo: PKCE always, S256 only (oidc-provider 9 knows no other method; `plain` is rejected).
  pkce: { required: () => true },
  // Pleo's scopes are plain OAuth scopes. Listing them here is what makes oidc-provider grant them
  // (without resource indicators, requested scopes not listed here are silently dropped).
  scopes: SCOPES,
  // No OpenID Connect: no `openid` is requested and no claims are exposed.
  claims: { openid: ['sub'] },
  features: {
    introspection: { enabled: true },
    revocation: { enabled: false },
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: false },
    userinfo: { enabled: false },
    pushedAuthorizationRequests: { enabled: false },
  },
  // Pleo returns a refresh token from every code exchange, without `offline_access`.
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Pleo rotates on every use. oidc-provider always treats reuse of a consumed refresh token as
  // replay: it revokes the whole grant (every access and refresh token) and answers invalid_grant.
  rotateRefreshToken: true,
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    RefreshToken: 60 * 24 * 60 * 60,
    Interaction: 600,
    Session: 3600,
    Grant: 60 * 24 * 60 * 60,
  },
  extraTokenClaims: (_ctx, token) => ({ 'urn:pleo:params:oauth:subject_urn': companyUrn(token.accountId) }),
  cookies: { keys: ['conformance-cookie-key-not-secret'] },
  findAccount: (_ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
};

const provider = new Provider(ISSUER, configuration);

for (const name of [
  'authorization.accepted', 'authorization.success', 'authorization.error',
  'interaction.started', 'interaction.ended',
  'grant.success', 'grant.error', 'grant.revoked',
  'access_token.saved', 'access_token.destroyed',
  'refresh_token.saved', 'refresh_token.consumed', 'refresh_token.destroyed',
  'authorization_code.consumed', 'introspection.error', 'server_error',
]) {
  provider.on(name, (...args) => {
    count(name);
    const extra = {};
    const ctx = args[0]?.oidc ? args[0] : undefined;
    if (name === 'authorization.accepted' && ctx) {
      stats.authorizeRequests.push({ ...ctx.query });
      extra.query = ctx.query;
    }
    if ((name === 'grant.success' || name === 'grant.error') && ctx) {
      const body = ctx.oidc.body ?? {};
      const auth = ctx.get('authorization');
      const req = {
        ok: name === 'grant.success',
        grant_type: body.grant_type,
        bodyParams: Object.keys(body).sort(),
        authorizationScheme: auth ? auth.split(' ')[0] : null,
        clientSecretInBody: 'client_secret' in body,
        redirect_uri: body.redirect_uri,
        code_verifier_length: body.code_verifier?.length,
        scope: body.scope,
        refreshTokenFp: fp(body.refresh_token),
        contentType: ctx.get('content-type'),
      };
      if (name === 'grant.error') req.error = `${args[1]?.error}: ${args[1]?.error_description}`;
      if (name === 'grant.success' && body.grant_type === 'refresh_token') count('refresh.success');
      if (name === 'grant.error' && body.grant_type === 'refresh_token') count('refresh.error');
      stats.tokenRequests.push(req);
      Object.assign(extra, req);
    }
    if (name === 'authorization.error' && ctx) extra.error = `${args[1]?.error}: ${args[1]?.error_description}`;
    if (name === 'server_error') extra.error = String(args[1]?.stack ?? args[1]);
    if (name === 'grant.revoked') extra.grantId = args[1];
    if (name === 'refresh_token.consumed') {
      secrets.consumedRefreshTokens.push(args[0].jti);
      extra.refreshTokenFp = fp(args[0].jti);
    }
    log({ event: name, ...extra });
  });
}

// The "Pleo API": every request must carry a bearer token that the authorisation server says is
// active (checked with RFC 7662 introspection, as the client that obtained it — Pleo's rule).
async function introspect(token) {
  const basic = Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64');
  const res = await fetch(`${ISSUER}/oauth/token/introspect`, {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
  });
  if (!res.ok) throw new Error(`introspection answered ${res.status}: ${await res.text()}`);
  return res.json();
}

async function replayRefreshToken(index) {
  const token = secrets.consumedRefreshTokens[index];
  if (!token) return { status: 404, body: { error: 'no such consumed refresh token' } };
  const basic = Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64');
  const res = await fetch(`${ISSUER}/oauth/token`, {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: token }),
  });
  return { status: res.status, body: await res.json() };
}

const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

const api = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, `http://127.0.0.1:${API_PORT}`);
    if (url.pathname === '/__conformance/stats') return json(res, 200, stats);
    if (url.pathname === '/__conformance/replay-refresh' && req.method === 'POST') {
      const out = await replayRefreshToken(Number(url.searchParams.get('index') ?? 0));
      log({ event: 'conformance.replay', status: out.status, body: out.body });
      return json(res, 200, out);
    }
    if (url.pathname === '/__conformance/spend-last-refresh' && req.method === 'POST') {
      // Spend the newest refresh token (the one the gateway holds) as another party would.
      const last = secrets.lastRefreshTokenIssued;
      const idx = secrets.consumedRefreshTokens.length;
      secrets.consumedRefreshTokens.push(last);
      const out = await replayRefreshToken(idx);
      secrets.consumedRefreshTokens.pop();
      log({ event: 'conformance.spend', status: out.status, error: out.body.error });
      return json(res, 200, { status: out.status, error: out.body.error });
    }
    if (url.pathname === '/__conformance/introspect-last-refresh') {
      // Is the refresh token the gateway currently holds still alive? (The newest one issued.)
      const last = secrets.lastRefreshTokenIssued;
      return json(res, 200, last ? await introspect(last) : { active: false, note: 'none issued' });
    }

    const auth = req.headers.authorization ?? '';
    const m = /^Bearer ([^\s]+)$/.exec(auth);
    const record = {
      method: req.method,
      path: url.pathname,
      query: url.search,
      authorizationScheme: auth.split(' ')[0] || null,
      tokenFp: fp(m?.[1]),
      cookieForwarded: 'cookie' in req.headers,
    };
    stats.apiRequests.push(record);
    if (!m) {
      log({ event: 'api.request', ...record, status: 401 });
      return json(res, 401, { message: 'Missing or malformed Authorization header' });
    }
    const info = await introspect(m[1]);
    record.active = info.active;
    if (!info.active || info.client_id !== CLIENT_ID) {
      log({ event: 'api.request', ...record, status: 401 });
      return json(res, 401, { message: 'The JWT token has expired' });
    }
    log({ event: 'api.request', ...record, status: 200 });
    if (url.pathname === '/v1/introspect') {
      return json(res, 200, {
        data: {
          authMethod: 'OAUTH2',
          clientId: info.client_id,
          scope: info.scope,
          applicationName: 'conformance',
          subjectURN: info['urn:pleo:params:oauth:subject_urn'],
        },
      });
    }
    return json(res, 200, { data: { echo: record, sub: info.sub, scope: info.scope, exp: info.exp } });
  } catch (e) {
    log({ event: 'api.error', error: String(e?.stack ?? e) });
    return json(res, 500, { message: String(e) });
  }
});

// Remember the newest refresh token value so the driver can ask whether it survived replay.
provider.on('refresh_token.saved', (token) => { secrets.lastRefreshTokenIssued = token.jti; });

const providerServer = createServer(provider.callback());
providerServer.listen(PROVIDER_PORT, '127.0.0.1', () => {
  api.listen(API_PORT, '127.0.0.1', () => {
    log({
      ready: true,
      issuer: ISSUER,
      api: `http://127.0.0.1:${API_PORT}`,
      oidcProvider: process.env.npm_package_dependencies_oidc_provider,
    });
  });
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
