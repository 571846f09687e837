// A real OpenID Provider for the single sign-on tests: the certified `oidc-provider` package,
// unchanged, started on loopback from the configuration below and the values the test gives
// (tests/support/oidc_provider.py writes them as JSON to the file named on the command line).
//
// What the test gives: the port to listen on (0: any free one), the issuer (a template whose
// "{port}" becomes the port listened on; the same issuer on another port makes a second
// provider that signs with another key under the broker's issuer), one confidential client
// (the broker: client_secret_basic, its exact redirect URIs), the accounts file (account id ->
// {groups, email, name, preferred_username}, read afresh at every sign-in so a test can take a
// person out of a group between two sign-ins), whether the scope claims go into the ID token
// (else only the userinfo endpoint has them), the ID token's lifetime and signing algorithm,
// whether the device authorization grant is offered (a provider without it, for
// `broker login`'s fallback to the loopback redirect).
//
// What this file fixes: the provider's own login and consent pages (devInteractions: any
// login, any password), the device authorization grant (RFC 8628) unless the test turns it
// off, PKCE S256 required for
// every authorization request, RFC 9207 `iss` on every authorization response (oidc-provider
// always sends it and advertises authorization_response_iss_parameter_supported), a `groups`
// claim on scope `profile` (as a provider's groups claim comes with a scope the client asks
// for), no refresh tokens, signed cookies over plain http (loopback only).
//
// No page of it refers to anything off this machine (see the middleware below).
//
// It prints one JSON line {"ready": true, "issuer", "port"} once it listens, and logs to stderr.

import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import { exportJWK, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';

const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const host = config.host ?? '127.0.0.1';
if (!['127.0.0.1', '::1', 'localhost'].includes(host)) {
  throw new Error('the test provider listens on loopback only');
}

function readAccounts() {
  // Read at every use: the test rewrites the file between sign-ins.
  return JSON.parse(readFileSync(config.accounts_file, 'utf8'));
}

async function signingKeys(alg) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { keys: [{ ...jwk, alg, use: 'sig', kid: randomUUID() }] };
}

function seconds(value, fallback) {
  return () => (Number.isFinite(value) ? value : fallback);
}

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port ?? 0, host, resolve);
});
const { port } = server.address();
const issuer = (config.issuer ?? 'http://127.0.0.1:{port}').replaceAll('{port}', String(port));
const alg = config.signing_alg ?? 'RS256';
const client = config.client;
const deviceFlow = config.device_flow !== false;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: client.client_id,
      client_secret: client.client_secret,
      client_name: client.client_name ?? 'PII Key Broker',
      redirect_uris: client.redirect_uris,
      grant_types: deviceFlow ? ['authorization_code', DEVICE_CODE] : ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: alg,
    },
  ],
  jwks: await signingKeys(alg),
  async findAccount(ctx, id) {
    const account = readAccounts()[id];
    if (account === undefined) {
      return undefined; // a person the provider no longer knows
    }
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          groups: account.groups ?? [],
          email: account.email ?? `${id}@example.test`,
          email_verified: true,
          name: account.name ?? id,
          preferred_username: account.preferred_username ?? id,
        };
      },
    };
  },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username', 'groups'],
    email: ['email', 'email_verified'],
  },
  scopes: ['openid', 'profile', 'email'],
  // false: every claim of the granted scopes is in the ID token, as Okta's and Entra's
  // groups claim is; true keeps the ID token to the OIDC core claims and the rest in userinfo.
  conformIdTokenClaims: config.claims_only_in_userinfo === true,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: deviceFlow },
    claimsParameter: { enabled: true },
    revocation: { enabled: false },
    introspection: { enabled: false },
  },
  issueRefreshToken: async () => false,
  cookies: {
    keys: [randomBytes(32).toString('base64url')],
    long: { httpOnly: true, sameSite: 'lax' },
    short: { httpOnly: true, sameSite: 'lax' },
  },
  ttl: {
    AccessToken: seconds(config.access_token_ttl, 600),
    AuthorizationCode: seconds(config.code_ttl, 60),
    DeviceCode: seconds(config.device_code_ttl, 600),
    Grant: seconds(config.grant_ttl, 3600),
    IdToken: seconds(config.id_token_ttl, 600),
    Interaction: seconds(config.interaction_ttl, 600),
    Session: seconds(config.session_ttl, 3600),
  },
  renderError(ctx, out) {
    // The default page loads a web font from the internet; this one loads nothing.
    ctx.type = 'html';
    const text = Object.entries(out)
      .map(([key, value]) => `<p><strong>${key}</strong>: ${String(value).replace(/[<>&"]/g, '')}</p>`)
      .join('');
    ctx.body = `<!DOCTYPE html><html><head><title>Provider error</title></head><body><h1>Provider error</h1>${text}</body></html>`;
  },
});
provider.proxy = false;
// The provider's built-in pages import a web font from the internet: the tests reach loopback
// only, so that reference is taken out of every page and a Content-Security-Policy keeps the
// browser from fetching anything but this provider's own resources.
provider.use(async (ctx, next) => {
  await next();
  if (typeof ctx.body === 'string' && ctx.response.is('html')) {
    ctx.body = ctx.body.replace(/@import url\(https?:[^)]*\);?/g, '');
    ctx.set(
      'content-security-policy',
      "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:",
    );
  }
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
server.on('request', provider.callback());

process.on('SIGTERM', () => server.close(() => process.exit(0)));
console.log(JSON.stringify({ ready: true, issuer, port }));
