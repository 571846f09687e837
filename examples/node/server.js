// A small resource service in Node that holds customer records and hands them out masked by
// the PII Key Broker's central rules. It is what a team writing a service outside Python
// needs, with one dependency (jose):
//
//   1. The presented key (`Authorization: Bearer <key>`, or `DPoP <key>` with a `DPoP` proof
//      header) is verified from the broker's JWKS: an alg among the allowed ones, typ at+jwt,
//      the signature, iss = the broker, aud = this service's own id, exp/nbf with a small
//      leeway (RFC 9068 §4).
//   2. Its revocation is checked on the Token Status List the key names
//      (`status.status_list.{idx,uri}`, draft-ietf-oauth-status-list): the statuslist+jwt is
//      fetched, verified with the same JWKS (typ statuslist+jwt, sub = the uri), inflated, and
//      bit idx read. The list is cached no longer than its `ttl` and the response's
//      Cache-Control max-age allow, so a revocation reaches us within that time; when no fresh
//      list can be had the key is refused (fail closed).
//   3. The record is sent with the key to the broker's `POST /v1/mask`, authenticated as this
//      service (HTTP Basic client id and secret). The broker checks the key again (its
//      revocation, max_uses, DPoP proof) and masks every field the key does not grant; we
//      return what it returns. No masking logic lives here, so rules changed centrally apply
//      at once.
//
// Configuration (environment): BROKER_URL (the broker's issuer URL), SERVICE_ID and
// SERVICE_SECRET (this service's credentials; SERVICE_ID is also the audience it accepts),
// HOST (127.0.0.1), PORT (8080; 0 picks a free one), PUBLIC_URL (the URL clients call us by,
// for DPoP's htu; default http://HOST:PORT), DATA_FILE (records and their JSON-path mapping;
// default ../records.json), ALGORITHMS (EdDSA,ES256,RS256), JWKS_URL (default
// BROKER_URL/.well-known/jwks.json).
//
// Routes: GET /records/{id} (the record, masked) and GET /healthz. Refusals are RFC 6750
// errors: 401 invalid_token with a `reason` (signature, audience, expired, revoked, ...),
// 503 when the status list cannot be had. Keys and record values are never logged.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateSync } from 'node:zlib';
import * as jose from 'jose';

const HERE = dirname(fileURLToPath(import.meta.url));
const LEEWAY_SECONDS = 5;
const FETCH_TIMEOUT_MS = 5000;
const MAX_LIST_BYTES = 1 << 24; // a decompressed list larger than 16 MiB is refused

const env = process.env;
const BROKER_URL = (env.BROKER_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
const SERVICE_ID = env.SERVICE_ID ?? 'customers-db';
const SERVICE_SECRET = env.SERVICE_SECRET ?? '';
const HOST = env.HOST ?? '127.0.0.1';
const PORT = Number.parseInt(env.PORT ?? '8080', 10);
const ALGORITHMS = (env.ALGORITHMS ?? 'EdDSA,ES256,RS256').split(',').map((a) => a.trim());
const JWKS = jose.createRemoteJWKSet(
  new URL(env.JWKS_URL ?? `${BROKER_URL}/.well-known/jwks.json`),
  { timeoutDuration: FETCH_TIMEOUT_MS },
);
const DATA = JSON.parse(readFileSync(env.DATA_FILE ?? resolve(HERE, '..', 'records.json'), 'utf8'));

/** A refusal: the HTTP status, the RFC 6750 error and a short machine-readable reason. */
class Refused extends Error {
  constructor(status, error, reason, description) {
    super(description);
    this.status = status;
    this.error = error;
    this.reason = reason;
  }
}

const invalid = (reason, description) => new Refused(401, 'invalid_token', reason, description);

/** Why jose refused a key, as one of our reasons (the test suite and logs read these). */
function joseReason(err) {
  if (err instanceof jose.errors.JWTExpired) return 'expired';
  if (err instanceof jose.errors.JWTClaimValidationFailed) {
    return { aud: 'audience', iss: 'issuer', nbf: 'not-yet-valid', typ: 'type' }[err.claim] ?? 'claims';
  }
  if (err instanceof jose.errors.JWSSignatureVerificationFailed) return 'signature';
  if (err instanceof jose.errors.JOSEAlgNotAllowed) return 'algorithm';
  if (err instanceof jose.errors.JWKSNoMatchingKey) return 'unknown-key';
  if (err instanceof jose.errors.JWKSTimeout) return 'jwks-unavailable';
  return 'malformed';
}

// ---- 1. the key --------------------------------------------------------------------------

/** The scheme and key of the Authorization header (Bearer or DPoP, RFC 6750 / RFC 9449). */
function presentedKey(req) {
  const header = req.headers.authorization ?? '';
  const match = /^(Bearer|DPoP) +([A-Za-z0-9._~+/-]+=*)$/i.exec(header);
  if (!match) throw new Refused(401, 'invalid_request', 'missing', 'present a key as Bearer or DPoP');
  return { scheme: match[1].toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer', key: match[2] };
}

async function verifyKey(key) {
  try {
    const { payload } = await jose.jwtVerify(key, JWKS, {
      algorithms: ALGORITHMS,
      typ: 'at+jwt',
      issuer: BROKER_URL,
      audience: SERVICE_ID,
      clockTolerance: LEEWAY_SECONDS,
      requiredClaims: ['exp', 'jti'],
    });
    return payload;
  } catch (err) {
    if (!(err instanceof jose.errors.JOSEError) || err instanceof jose.errors.JWKSTimeout) {
      throw new Refused(503, 'temporarily_unavailable', 'jwks-unavailable', 'the JWKS cannot be had');
    }
    throw invalid(joseReason(err), err.message);
  }
}

// ---- 2. the status list ------------------------------------------------------------------

const lists = new Map(); // uri -> { bits, bytes, freshUntil }
const fetching = new Map(); // uri -> Promise of the entry (one fetch per uri at a time)

/** How long a fetched list may be used: the least of its ttl, the response's max-age and its
 * exp; no-store/no-cache (or none of them) means not at all. */
function lifetimeSeconds(payload, cacheControl) {
  const bounds = [];
  if (Number.isFinite(payload.ttl)) bounds.push(payload.ttl);
  const directives = (cacheControl ?? '').toLowerCase().split(',').map((d) => d.trim());
  if (directives.includes('no-store') || directives.includes('no-cache')) return 0;
  const maxAge = directives.find((d) => d.startsWith('max-age='));
  if (maxAge) bounds.push(Number.parseInt(maxAge.slice(8), 10) || 0);
  if (Number.isFinite(payload.exp)) bounds.push(payload.exp - Date.now() / 1000);
  return bounds.length ? Math.max(0, Math.min(...bounds)) : 0;
}

async function fetchList(uri) {
  let res;
  try {
    res = await fetch(uri, {
      headers: { accept: 'application/statuslist+jwt' },
      redirect: 'error',
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    });
  } catch (err) {
    throw new Error(`status list fetch: ${err.message}`);
  }
  if (res.status !== 200) throw new Error(`status list fetch: HTTP ${res.status}`);
  const token = (await res.text()).trim();
  const { payload } = await jose.jwtVerify(token, JWKS, {
    algorithms: ALGORITHMS,
    typ: 'statuslist+jwt',
    subject: uri,
    clockTolerance: LEEWAY_SECONDS,
    requiredClaims: ['iat'],
  });
  const list = payload.status_list;
  if (![1, 2, 4, 8].includes(list?.bits) || typeof list.lst !== 'string') {
    throw new Error('status list: bits or lst missing');
  }
  const bytes = inflateSync(Buffer.from(list.lst, 'base64url'), { maxOutputLength: MAX_LIST_BYTES });
  const lifetime = lifetimeSeconds(payload, res.headers.get('cache-control'));
  return { bits: list.bits, bytes, freshUntil: Date.now() + lifetime * 1000 };
}

/** A fresh copy of the list at uri: the cached one while fresh, else a new fetch (shared by
 * concurrent requests). Throws when none can be had; an outdated copy is never used. */
async function freshList(uri) {
  const cached = lists.get(uri);
  if (cached && Date.now() < cached.freshUntil) return cached;
  let pending = fetching.get(uri);
  if (!pending) {
    pending = fetchList(uri).finally(() => fetching.delete(uri));
    fetching.set(uri, pending);
  }
  const entry = await pending;
  lists.set(uri, entry);
  return entry;
}

async function checkStatus(claims) {
  const ref = claims.status?.status_list;
  if (!ref || !Number.isSafeInteger(ref.idx) || ref.idx < 0 || typeof ref.uri !== 'string') {
    throw invalid('no-status', 'the key names no status list entry');
  }
  // Only the broker's own lists: a key cannot send us fetching elsewhere.
  if (!ref.uri.startsWith(`${BROKER_URL}/`)) throw invalid('status-uri', 'the status list is not the broker’s');
  let list;
  try {
    list = await freshList(ref.uri);
  } catch (err) {
    throw new Refused(503, 'temporarily_unavailable', 'status-list-unavailable', err.message);
  }
  const bit = ref.idx * list.bits;
  const byte = Math.floor(bit / 8);
  if (byte >= list.bytes.length) throw invalid('status-index', 'the status index is outside the list');
  const status = (list.bytes[byte] >> (bit % 8)) & ((1 << list.bits) - 1);
  if (status !== 0) throw invalid('revoked', 'the key has been revoked');
}

// ---- 3. the masking API ------------------------------------------------------------------

const BASIC = Buffer.from(
  `${encodeURIComponent(SERVICE_ID)}:${encodeURIComponent(SERVICE_SECRET)}`,
).toString('base64');

async function masked(record, presented, req) {
  const body = {
    key: presented.key,
    records: [record],
    paths: DATA.paths,
    default: DATA.default ?? 'mask',
  };
  if (presented.scheme === 'DPoP') {
    const base = env.PUBLIC_URL ?? `http://${req.headers.host}`;
    const url = new URL(req.url, base);
    body.dpop = { proof: req.headers.dpop, method: req.method, url: url.origin + url.pathname };
  }
  let res;
  try {
    res = await fetch(`${BROKER_URL}/v1/mask`, {
      method: 'POST',
      headers: { authorization: `Basic ${BASIC}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS * 2),
    });
  } catch (err) {
    throw new Refused(502, 'temporarily_unavailable', 'broker-unavailable', `mask: ${err.message}`);
  }
  const answer = await res.json().catch(() => ({}));
  // The broker's own check (revocation, max_uses, DPoP proof...) refused the key.
  if (res.status === 403) {
    throw invalid('not-active', `the broker refused the key: ${answer.reason ?? answer.detail ?? 'not active'}`);
  }
  if (res.status !== 200) {
    throw new Refused(502, 'temporarily_unavailable', 'broker-error', `mask: HTTP ${res.status}`);
  }
  return answer;
}

// ---- the service -------------------------------------------------------------------------

function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

async function handle(req, res) {
  const path = new URL(req.url, 'http://x').pathname;
  if (req.method === 'GET' && path === '/healthz') return send(res, 200, { ok: true });
  const match = /^\/records\/([^/]+)$/.exec(path);
  if (!match) return send(res, 404, { error: 'not_found' });
  if (req.method !== 'GET') return send(res, 405, { error: 'method_not_allowed' }, { allow: 'GET' });
  let presented;
  try {
    presented = presentedKey(req);
    const claims = await verifyKey(presented.key);
    const bound = typeof claims.cnf?.jkt === 'string';
    if (bound && (presented.scheme !== 'DPoP' || !req.headers.dpop)) {
      throw invalid('dpop-required', 'the key is DPoP-bound: present it with the DPoP scheme and a proof');
    }
    if (!bound && presented.scheme === 'DPoP') throw invalid('not-bound', 'the key is not DPoP-bound');
    await checkStatus(claims);
    const record = DATA.records[decodeURIComponent(match[1])];
    if (record === undefined) return send(res, 404, { error: 'not_found' });
    const answer = await masked(record, presented, req);
    log(req, 200, 'masked', claims.jti);
    return send(res, 200, answer.records[0], { 'x-masking-rules-version': answer.rules_version ?? '' });
  } catch (err) {
    if (!(err instanceof Refused)) throw err;
    log(req, err.status, err.reason);
    const scheme = presented?.scheme ?? 'Bearer';
    const challenge = `${scheme} error="${err.error}", error_description="${err.reason}"`;
    const headers = err.status === 401 ? { 'www-authenticate': challenge } : {};
    return send(res, err.status, { error: err.error, reason: err.reason, error_description: err.message }, headers);
  }
}

/** One line per request: never the key, never a value of a record. */
function log(req, status, reason, jti) {
  const line = { method: req.method, path: req.url.split('?')[0], status, reason, jti };
  process.stderr.write(`${JSON.stringify(line)}\n`);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`internal error: ${err?.stack ?? err}\n`);
    if (!res.headersSent) send(res, 500, { error: 'server_error' });
  });
});
server.listen(PORT, HOST, () => {
  const { port } = server.address();
  // One line on stdout says where we listen (PORT=0 picks a free port).
  process.stdout.write(`${JSON.stringify({ listening: `http://${HOST}:${port}` })}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
