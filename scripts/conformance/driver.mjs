// Drives pleo-gateway through a real login, two refreshes and a logout against server.mjs
// (oidc-provider configured like Pleo). Starts both processes itself and stops them at the end.
//
//   node driver.mjs            (GATEWAY_BIN defaults to ../../target/debug/pleo-gateway)
//
// Exit code 0 when every step passed. Logs of both children go to ./logs/.

import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const here = dirname(fileURLToPath(import.meta.url));
const GATEWAY_BIN = process.env.GATEWAY_BIN ?? resolve(here, '../../target/debug/pleo-gateway');
const ACCESS_TOKEN_TTL = 30; // seconds, at the provider
const REFRESH_BEFORE_EXPIRY = '20s'; // gateway; it caps this at half the lifetime -> 15 s
const CLIENT_ID = 'a3c1d6a2-5f0e-4b7e-9a55-2f1b7d3c9e10';
// Characters that RFC 6749 §2.3.1 makes the client form-urlencode before Basic auth.
const CLIENT_SECRET = 'conf+secret/with=special:chars%25~ok';
const SCOPES = 'users:read export-jobs:read';

const freePort = () => new Promise((ok, fail) => {
  const s = createServer();
  s.once('error', fail);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
});

// ---------------------------------------------------------------- results
const results = [];
let failed = false;
function step(name, pass, detail = '') {
  results.push({ name, pass, detail });
  if (!pass) failed = true;
  console.log(`${pass ? 'PASS' : 'FAIL'}  ${name}${detail ? `  — ${detail}` : ''}`);
}
function note(text) { console.log(`      ${text}`); }

// ---------------------------------------------------------------- cookie jar (per origin)
let jar = new Map(); // swapped in step 12 to play two browsers
function storeCookies(url, res) {
  const origin = new URL(url).origin;
  const cookies = jar.get(origin) ?? new Map();
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';').map((s) => s.trim());
    const i = pair.indexOf('=');
    const name = pair.slice(0, i);
    const value = pair.slice(i + 1);
    const expired = attrs.some((a) => /^max-age=(0|-)/i.test(a))
      || attrs.some((a) => /^expires=/i.test(a) && Date.parse(a.slice(8)) < Date.now());
    if (expired) cookies.delete(name); else cookies.set(name, value);
  }
  jar.set(origin, cookies);
}
function cookieHeader(url) {
  const cookies = jar.get(new URL(url).origin);
  if (!cookies?.size) return undefined;
  return [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
}
async function http(url, { method = 'GET', headers = {}, body } = {}) {
  const h = { ...headers };
  const c = cookieHeader(url);
  if (c) h.cookie = c;
  const res = await fetch(url, { method, headers: h, body, redirect: 'manual' });
  storeCookies(url, res);
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, url, location: res.headers.get('location') };
}
// The gateway's session cookie: `pleo-session` over http (the __Host- prefix is dropped).
const SESSION_COOKIE = 'pleo-session';
const hasSessionCookie = () => Boolean(jar.get(new URL(GATEWAY).origin)?.has(SESSION_COOKIE));
const abs = (base, loc) => new URL(loc, base).href;

// ---------------------------------------------------------------- processes
const children = [];
mkdirSync(resolve(here, 'logs'), { recursive: true });
function start(name, cmd, args, env) {
  const out = createWriteStream(resolve(here, 'logs', `${name}.log`));
  const child = spawn(cmd, args, { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, cwd: here });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  children.push(child);
  return child;
}
function stopAll() { for (const c of children) if (c.exitCode === null) c.kill('SIGTERM'); }
process.on('exit', stopAll);
process.on('SIGINT', () => { stopAll(); process.exit(130); });

async function waitFor(url, what) {
  for (let i = 0; i < 200; i += 1) {
    try { const r = await fetch(url); if (r.status < 500) return; } catch { /* not up yet */ }
    await sleep(100);
  }
  throw new Error(`${what} did not come up at ${url}`);
}


// Walks oidc-provider's dev interactions (login form, consent form) from an authorize URL until
// the redirect to the gateway's callback. With abort, cancels at the first page instead.
async function providerUi(startUrl, { abort = false } = {}) {
  let url = startUrl;
  let callback;
  const pages = [];
  for (let hop = 0; hop < 20 && !callback; hop += 1) {
    const r = await http(url);
    if (r.status >= 300 && r.status < 400) {
      const next = abs(url, r.location);
      if (next.startsWith(REDIRECT_URI)) { callback = next; break; }
      url = next;
      continue;
    }
    if (r.status !== 200) throw new Error(`provider answered ${r.status} at ${url}: ${r.text.slice(0, 500)}`);
    if (abort) {
      const cancel = /href="([^"]*\/abort)"/.exec(r.text);
      if (!cancel) throw new Error(`no abort link at ${url}`);
      pages.push('abort');
      url = abs(url, cancel[1]);
      continue;
    }
    const form = /<form[^>]*action="([^"]+)"[^>]*method="post"|<form[^>]*method="post"[^>]*action="([^"]+)"/i.exec(r.text);
    if (!form) throw new Error(`no form at ${url}: ${r.text.slice(0, 500)}`);
    const fields = new URLSearchParams();
    for (const m of r.text.matchAll(/<input[^>]*>/gi)) {
      const name = /name="([^"]+)"/.exec(m[0])?.[1];
      const value = /value="([^"]*)"/.exec(m[0])?.[1] ?? '';
      if (name) fields.set(name, value);
    }
    const prompt = fields.get('prompt');
    pages.push(prompt);
    if (prompt === 'login') { fields.set('login', 'alice'); fields.set('password', 'any'); }
    const post = await http(abs(url, form[1] ?? form[2]), {
      method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: fields.toString(),
    });
    if (post.status < 300 || post.status >= 400) throw new Error(`form POST answered ${post.status}: ${post.text.slice(0, 500)}`);
    url = abs(url, post.location);
    if (url.startsWith(REDIRECT_URI)) callback = url;
  }
  return { callback, pages };
}

// ---------------------------------------------------------------- main
const [PP, AP, GP] = [await freePort(), await freePort(), await freePort()];
const PROVIDER = `http://127.0.0.1:${PP}`;
const API = `http://127.0.0.1:${AP}`;
const GATEWAY = `http://127.0.0.1:${GP}`;
const REDIRECT_URI = `${GATEWAY}/auth/callback`;
const stats = async () => (await fetch(`${API}/__conformance/stats`)).json();

console.log(`provider ${PROVIDER}  api ${API}  gateway ${GATEWAY}`);
start('provider', process.execPath, [resolve(here, 'server.mjs')], {
  PROVIDER_PORT: String(PP), API_PORT: String(AP), REDIRECT_URI, CLIENT_ID, CLIENT_SECRET,
  ACCESS_TOKEN_TTL: String(ACCESS_TOKEN_TTL), DEBUG: process.env.DEBUG ?? '',
});
const gatewayEnv = {
  RUST_LOG: process.env.RUST_LOG ?? 'info',
  PLEO_GATEWAY__SERVER__LISTEN: `127.0.0.1:${GP}`,
  PLEO_GATEWAY__SERVER__PUBLIC_URL: GATEWAY,
  PLEO_GATEWAY__PLEO__AUTH_URL: PROVIDER,
  PLEO_GATEWAY__PLEO__API_URL: API,
  PLEO_GATEWAY__PLEO__CLIENT_ID: CLIENT_ID,
  PLEO_GATEWAY__PLEO__CLIENT_SECRET: CLIENT_SECRET,
  PLEO_GATEWAY__PLEO__SCOPES: SCOPES,
  PLEO_GATEWAY__PLEO__REFRESH_BEFORE_EXPIRY: REFRESH_BEFORE_EXPIRY,
  PLEO_GATEWAY__SESSION__STORE: process.env.SESSION_STORE ?? 'memory',
  PLEO_GATEWAY__SESSION__REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  PLEO_GATEWAY__SESSION__KEY_PREFIX: `conformance-${process.pid}-${Date.now()}:`,
  PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS: Buffer.from('conformance-key-32-bytes-long!!!').toString('base64'),
};
console.log(`gateway: ${GATEWAY_BIN} with\n${Object.entries(gatewayEnv).map(([k, v]) => `  ${k}=${v}`).join('\n')}`);
start('gateway', GATEWAY_BIN, [], gatewayEnv);
await waitFor(`${API}/__conformance/stats`, 'provider');
await waitFor(`${GATEWAY}/healthz`, 'gateway');

try {
  // 1. /auth/login -> 302 to the provider's /oauth/authorize with the right parameters.
  const login = await http(`${GATEWAY}/auth/login?return_to=/pleo/v2/employees`);
  const authz = login.location && new URL(abs(GATEWAY, login.location));
  const p = authz?.searchParams;
  step('1 GET /auth/login -> 302 to {auth_url}/oauth/authorize',
    login.status === 302 && authz?.origin === PROVIDER && authz.pathname === '/oauth/authorize',
    `${login.status} ${authz?.origin}${authz?.pathname}`);
  const expected = {
    response_type: 'code', client_id: CLIENT_ID, redirect_uri: REDIRECT_URI, scope: SCOPES, code_challenge_method: 'S256',
  };
  const mismatched = Object.entries(expected).filter(([k, v]) => p?.get(k) !== v);
  step('1a authorize parameters (response_type, client_id, exact redirect_uri, space-separated scope, S256)',
    mismatched.length === 0,
    mismatched.length ? `mismatch: ${mismatched.map(([k]) => `${k}=${p?.get(k)}`).join(', ')}` : `params: ${[...p.keys()].join(',')}`);
  step('1b state and code_challenge well formed',
    (p?.get('state')?.length ?? 0) >= 22 && /^[A-Za-z0-9_-]{43}$/.test(p?.get('code_challenge') ?? ''),
    `state length ${p?.get('state')?.length}, code_challenge length ${p?.get('code_challenge')?.length}`);
  note(`/auth/login set cookies: ${login.headers.getSetCookie().map((c) => c.split('=')[0]).join(', ') || '(none)'}`);

  // 2. The provider's own UI: login form, then consent form, then redirect to the callback.
  const { callback, pages } = await providerUi(authz.href);
  const cb = callback && new URL(callback);
  step('2 provider login + consent -> redirect to the exact redirect_uri with code and state',
    Boolean(cb?.searchParams.get('code')) && cb.searchParams.get('state') === p.get('state'),
    `pages: ${pages.join(' -> ')}; callback params: ${cb ? [...cb.searchParams.keys()].join(',') : 'none'}`);

  // 3. /auth/callback: code exchange at /oauth/token, new session cookie, 302 to return_to.
  note(`cookies the browser sends to /auth/callback: ${[...(jar.get(GATEWAY) ?? new Map()).keys()].join(', ') || '(none)'}`);
  const done = await http(callback);
  const cookieNames = done.headers.getSetCookie().map((c) => c.split(';')[0].split('=')[0]);
  step('3 GET /auth/callback -> 302 to return_to with a session cookie',
    done.status === 302 && done.location === '/pleo/v2/employees' && cookieNames.includes(SESSION_COOKIE),
    `${done.status} -> ${done.location}; set-cookie: ${done.headers.getSetCookie().map((c) => c.replace(/=[^;]+/, '=…')).join(' | ')}${done.status !== 302 ? `; body ${done.text.slice(0, 300)}` : ''}`);
  let s = await stats();
  const exchange = s.tokenRequests.find((t) => t.grant_type === 'authorization_code');
  step('3a token request: client_secret_basic (no secret in body), code_verifier, exact redirect_uri',
    exchange?.ok && exchange.authorizationScheme === 'Basic' && !exchange.clientSecretInBody
      && exchange.redirect_uri === REDIRECT_URI && exchange.code_verifier_length >= 43
      && !exchange.bodyParams.includes('client_id'),
    JSON.stringify(exchange));

  // 4. /auth/session
  const sess = await http(`${GATEWAY}/auth/session`, { headers: { accept: 'application/json' } });
  let sj = {};
  try { sj = JSON.parse(sess.text); } catch { /* reported below */ }
  step('4 GET /auth/session -> 200 authenticated, subject from /v1/introspect, scopes',
    sess.status === 200 && sj.authenticated === true && /^urn:pleo:company:/.test(sj.subject ?? '')
      && SCOPES.split(' ').every((x) => sj.scopes?.includes(x)),
    `${sess.status} ${sess.text}`);
  step('4a no token in /auth/session', !/access_token"|refresh_token"/.test(sess.text) && !sess.text.includes('Bearer'));

  // 5. proxied call with the first access token, no refresh.
  const before = (await stats()).events['refresh.success'] ?? 0;
  const call1 = await http(`${GATEWAY}/pleo/v2/employees?limit=1`, { headers: { accept: 'application/json' } });
  s = await stats();
  const api1 = s.apiRequests.at(-1);
  step('5 GET /pleo/v2/employees -> 200 from the API with a live Bearer token, no refresh',
    call1.status === 200 && api1?.path === '/v2/employees' && api1.authorizationScheme === 'Bearer' && api1.active === true
      && !api1.cookieForwarded && (s.events['refresh.success'] ?? 0) === before,
    `${call1.status}; API saw ${JSON.stringify(api1)}`);

  // 6. past the refresh margin: exactly one refresh.
  const firstToken = api1?.tokenFp;
  const waitUntilDue = async () => {
    const cur = JSON.parse((await http(`${GATEWAY}/auth/session`, { headers: { accept: 'application/json' } })).text);
    const exp = Date.parse(cur.access_token_expires_at); // RFC 3339, whole seconds
    const lifetime = ACCESS_TOKEN_TTL * 1000;
    const margin = Math.min(20000, lifetime / 2);
    const due = exp - margin + 1500; // 1.5 s into the refresh window, still 13.5 s before expiry
    const ms = Math.max(0, due - Date.now());
    note(`access token expires at ${new Date(exp).toISOString()}; waiting ${Math.round(ms / 1000)} s to enter the refresh window`);
    await sleep(ms);
    return exp;
  };
  const exp1 = await waitUntilDue();
  const r6 = await http(`${GATEWAY}/pleo/v2/employees`, { headers: { accept: 'application/json' } });
  s = await stats();
  const api2 = s.apiRequests.at(-1);
  const refreshes6 = s.tokenRequests.filter((t) => t.grant_type === 'refresh_token');
  step('6 first call in the refresh window -> 200, exactly one refresh, new token upstream',
    r6.status === 200 && refreshes6.length === 1 && refreshes6[0].ok && api2?.tokenFp !== firstToken && api2?.active === true,
    `${r6.status}; refresh requests ${JSON.stringify(refreshes6)}`);
  step('6a refresh request: client_secret_basic, only grant_type + refresh_token in the body',
    refreshes6[0]?.authorizationScheme === 'Basic' && JSON.stringify(refreshes6[0]?.bodyParams) === '["grant_type","refresh_token"]',
    `body params ${JSON.stringify(refreshes6[0]?.bodyParams)}`);
  const sessAfter = JSON.parse((await http(`${GATEWAY}/auth/session`, { headers: { accept: 'application/json' } })).text);
  step('6b /auth/session reports the new, later access-token expiry', Date.parse(sessAfter.access_token_expires_at) > exp1,
    `was ${new Date(exp1).toISOString()}, now ${sessAfter.access_token_expires_at}`);
  const again = await http(`${GATEWAY}/pleo/v2/employees`, { headers: { accept: 'application/json' } });
  s = await stats();
  step('6c an immediate further call -> 200, no further refresh',
    again.status === 200 && s.tokenRequests.filter((t) => t.grant_type === 'refresh_token').length === 1);

  // 7. second refresh (uses the rotated refresh token), with 5 concurrent calls.
  await waitUntilDue();
  const burst = await Promise.all(Array.from({ length: 5 }, (_, i) => http(`${GATEWAY}/pleo/v2/employees?i=${i}`, { headers: { accept: 'application/json' } })));
  s = await stats();
  const refreshes7 = s.tokenRequests.filter((t) => t.grant_type === 'refresh_token');
  step('7 second refresh window, 5 concurrent calls -> all 200, exactly one more refresh, with the rotated token',
    burst.every((b) => b.status === 200) && refreshes7.length === 2 && refreshes7.every((t) => t.ok)
      && refreshes7[1].refreshTokenFp !== refreshes7[0].refreshTokenFp && !s.events['grant.revoked'],
    `statuses ${burst.map((b) => b.status).join(',')}; refresh requests ${JSON.stringify(refreshes7.map((t) => ({ ok: t.ok, rt: t.refreshTokenFp, error: t.error })))}; grant.revoked ${s.events['grant.revoked'] ?? 0}`);
  const tokensSeen = new Set(s.apiRequests.filter((a) => a.path === '/v2/employees').map((a) => a.tokenFp));
  note(`distinct access tokens seen by the API on /v2/employees: ${tokensSeen.size}`);

  // 8. logout
  const noCsrf = await http(`${GATEWAY}/auth/logout`, { method: 'POST', headers: { accept: 'application/json' } });
  step('8a POST /auth/logout without X-CSRF -> 403', noCsrf.status === 403, `${noCsrf.status} ${noCsrf.text}`);
  const out = await http(`${GATEWAY}/auth/logout`, { method: 'POST', headers: { 'x-csrf': '1', accept: 'application/json' } });
  step('8 POST /auth/logout with X-CSRF: 1 -> 2xx and the cookie expired',
    out.status >= 200 && out.status < 300 && !hasSessionCookie(),
    `${out.status}; set-cookie: ${out.headers.getSetCookie().map((c) => c.replace(/=[^;]*/, '=…')).join(' | ')}`);
  const after = await http(`${GATEWAY}/auth/session`, { headers: { accept: 'application/json' } });
  step('8b GET /auth/session after logout -> 401', after.status === 401, `${after.status}`);

  // 9. extra: the provider's replay detection (Pleo's reuse rule) really is on.
  const replay = await (await fetch(`${API}/__conformance/replay-refresh?index=0`, { method: 'POST' })).json();
  s = await stats();
  const last = await (await fetch(`${API}/__conformance/introspect-last-refresh`)).json();
  step('9 extra: replaying the first, rotated-away refresh token -> invalid_grant, grant revoked, newest refresh token dead',
    replay.status === 400 && replay.body.error === 'invalid_grant' && s.events['grant.revoked'] === 1 && last.active === false,
    `${replay.status} ${JSON.stringify(replay.body)}; grant.revoked ${s.events['grant.revoked']}; newest refresh token active=${last.active}`);

  // 10. extra: the user cancels at the provider -> error=access_denied at the callback.
  const login2 = await http(`${GATEWAY}/auth/login?return_to=/x`);
  const { callback: denied, pages: pages2 } = await providerUi(abs(GATEWAY, login2.location), { abort: true });
  const deniedRes = await http(denied, { headers: { accept: 'application/json' } });
  step('10 extra: user cancels at the provider -> callback with error=access_denied -> 403 access_denied, no session',
    deniedRes.status === 403 && /access_denied/.test(deniedRes.text) && !hasSessionCookie(),
    `pages: ${pages2.join(' -> ')}; callback params ${[...new URL(denied).searchParams.keys()].join(',')}; ${deniedRes.status} ${deniedRes.text}`);

  // 11. extra: someone else spends the refresh token the gateway holds (a replay race, as Pleo
  // describes it) -> the gateway's own refresh is a reuse -> the provider revokes the grant and
  // answers invalid_grant -> the gateway must end the session (401 session_ended), once, no retry.
  const login3 = await http(`${GATEWAY}/auth/login?return_to=/`);
  const { callback: cb3, pages: pages3 } = await providerUi(abs(GATEWAY, login3.location));
  const done3 = await http(cb3);
  const ok3 = (await http(`${GATEWAY}/pleo/v2/employees`, { headers: { accept: 'application/json' } })).status;
  const stolen = await (await fetch(`${API}/__conformance/spend-last-refresh`, { method: 'POST' })).json();
  note(`second login (pages: ${pages3.join(' -> ')}) -> ${done3.status}; proxied call ${ok3}; refresh token spent behind the gateway's back: ${stolen.status}`);
  const revokedBefore = (await stats()).events['grant.revoked'] ?? 0;
  const refreshBefore = (await stats()).tokenRequests.filter((t) => t.grant_type === 'refresh_token').length;
  await waitUntilDue();
  const ended = await http(`${GATEWAY}/pleo/v2/employees`, { headers: { accept: 'application/json' } });
  await sleep(500);
  s = await stats();
  const newRefreshes = s.tokenRequests.filter((t) => t.grant_type === 'refresh_token').slice(refreshBefore);
  const endedSession = await http(`${GATEWAY}/auth/session`, { headers: { accept: 'application/json' } });
  step('11 extra: gateway refreshes with a token already spent elsewhere -> 401 session_ended, one refresh attempt, grant revoked, cookie expired',
    ended.status === 401 && /session_ended/.test(ended.text) && newRefreshes.length === 1 && !newRefreshes[0].ok
      && s.events['grant.revoked'] === revokedBefore + 1 && endedSession.status === 401 && !hasSessionCookie(),
    `${ended.status} ${ended.text}; gateway refresh attempts ${JSON.stringify(newRefreshes.map((t) => ({ ok: t.ok, error: t.error })))}; /auth/session ${endedSession.status}`);

  // 12. extra: login CSRF (RFC 6749 §10.12, RFC 9700 §4.7.1). An attacker starts a login in
  // their own browser, authorises with their own account, and does not follow the final redirect;
  // the victim's browser opens that callback URL. The gateway must not log the victim in.
  const victimJar = jar;
  jar = new Map(); // the attacker's browser
  const a = await http(`${GATEWAY}/auth/login?return_to=/`);
  const { callback: planted } = await providerUi(abs(GATEWAY, a.location));
  jar = new Map(); // the victim's browser: fresh, never started a login
  const v = await http(planted, { headers: { accept: 'application/json' } });
  const victimLoggedIn = hasSessionCookie();
  jar = victimJar;
  step('12 extra: callback URL from another browser (login CSRF) -> refused, no session',
    v.status >= 400 && !victimLoggedIn,
    `${v.status} ${v.location ? `-> ${v.location}` : v.text.slice(0, 200)}; victim got a session cookie: ${victimLoggedIn}`);

  s = await stats();
  note(`provider event counts: ${JSON.stringify(s.events)}`);
} catch (e) {
  step('flow aborted', false, String(e?.stack ?? e));
} finally {
  stopAll();
}

console.log(`\n${results.filter((r) => r.pass).length}/${results.length} steps passed`);
process.exitCode = failed ? 1 : 0;
