// A broker key checked as a Node resource server would, with two independent validators:
//   - oauth4webapi's validateJwtAccessToken (RFC 9068 §4; openid-client's own dependency,
//     pinned in package.json at the version openid-client uses), and
//   - jose's jwtVerify with createRemoteJWKSet (typ at+jwt, iss, aud, and the algorithms the
//     broker's metadata advertises).
// Both take the issuer's metadata from discovery (RFC 8414) and its keys from its jwks_uri.
//
// Usage: node verify.mjs ISSUER AUDIENCE TOKEN
// Prints one JSON object: {"oauth4webapi": {...}, "jose": {...}}, each {ok, claims, header}
// or {ok: false, class, code, message}. The only option beyond the libraries' defaults is
// allowInsecureRequests, for plain http on loopback.
import * as client from 'openid-client';
import * as oauth from 'oauth4webapi';
import * as jose from 'jose';

const [issuer, audience, token] = process.argv.slice(2);

async function attempt(fn) {
  try {
    return { ok: true, ...(await fn()) };
  } catch (err) {
    return { ok: false, class: err?.constructor?.name, code: err?.code, message: err?.message };
  }
}

const config = await client.discovery(new URL(issuer), 'resource-server', undefined, undefined, {
  algorithm: 'oauth2',
  execute: [client.allowInsecureRequests],
  timeout: 30,
});
const metadata = config.serverMetadata();
const algorithms = metadata.access_token_signing_alg_values_supported;

const viaOauth4webapi = await attempt(async () => {
  const request = new Request('http://resource-server.test/records', {
    headers: { authorization: `Bearer ${token}` },
  });
  const claims = await oauth.validateJwtAccessToken(metadata, request, audience, {
    signingAlgorithms: algorithms,
    [oauth.allowInsecureRequests]: true,
  });
  return { claims };
});

const viaJose = await attempt(async () => {
  const keys = jose.createRemoteJWKSet(new URL(metadata.jwks_uri), { timeoutDuration: 10000 });
  const { payload, protectedHeader } = await jose.jwtVerify(token, keys, {
    issuer: metadata.issuer,
    audience,
    typ: 'at+jwt',
    algorithms,
    requiredClaims: ['exp', 'iat', 'jti', 'sub', 'client_id'],
  });
  return { claims: payload, header: protectedHeader };
});

console.log(JSON.stringify({ algorithms, oauth4webapi: viaOauth4webapi, jose: viaJose }));
