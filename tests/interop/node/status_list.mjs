// A broker key's revocation checked as a Node resource server would, with no broker code:
//   - @sd-jwt/jwt-status-list (an independent implementation of draft-ietf-oauth-status-list)
//     reads the key's status entry (getStatusListFromJWT) and the list's bits
//     (getListFromStatusListJWT: ZLIB, base64url, bit order), and
//   - jose verifies the list's signature from the broker's JWKS (typ statuslist+jwt, the
//     algorithms the metadata advertises) and checks its sub is the key's uri.
//
// Usage: node status_list.mjs ISSUER TOKEN [TOKEN...]
// Prints one JSON object: {"keys": [{jti, idx, uri, status}], "lists": {uri: {header,
// payload, contentType, cacheControl}}} or {"error": {class, code, message}}.
import { getListFromStatusListJWT, getStatusListFromJWT } from '@sd-jwt/jwt-status-list';
import * as jose from 'jose';

const [issuer, ...tokens] = process.argv.slice(2);

try {
  const metadata = await (await fetch(new URL('/.well-known/oauth-authorization-server', issuer))).json();
  const keySet = jose.createRemoteJWKSet(new URL(metadata.jwks_uri), { timeoutDuration: 10000 });
  const algorithms = metadata.access_token_signing_alg_values_supported;
  const lists = {};
  const keys = [];
  for (const token of tokens) {
    const entry = getStatusListFromJWT(token);
    if (!(entry.uri in lists)) {
      const response = await fetch(entry.uri);
      if (response.status !== 200) {
        throw new Error(`status list ${entry.uri}: HTTP ${response.status}`);
      }
      const jwt = await response.text();
      const { payload, protectedHeader } = await jose.jwtVerify(jwt, keySet, {
        typ: 'statuslist+jwt',
        algorithms,
        subject: entry.uri,
        requiredClaims: ['sub', 'iat', 'exp'],
      });
      lists[entry.uri] = {
        jwt,
        header: protectedHeader,
        payload,
        contentType: response.headers.get('content-type'),
        cacheControl: response.headers.get('cache-control'),
      };
    }
    const list = getListFromStatusListJWT(lists[entry.uri].jwt);
    const jti = jose.decodeJwt(token).jti;
    keys.push({ jti, idx: entry.idx, uri: entry.uri, status: list.getStatus(entry.idx) });
  }
  for (const list of Object.values(lists)) delete list.jwt;
  console.log(JSON.stringify({ keys, lists }));
} catch (err) {
  console.log(JSON.stringify({ error: { class: err?.constructor?.name, code: err?.code, message: err?.message } }));
}
