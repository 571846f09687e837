// openid-client (v6, certified, unchanged) driving the broker as a Node service would.
//
// Usage: node client.mjs COMMAND [ARG]
//   discover              the metadata openid-client discovered (RFC 8414, algorithm 'oauth2')
//   grant basic|post|private_key_jwt
//                         client_credentials + authorization_details as billing-api
//                         (ClientSecretBasic, ClientSecretPost: openid-client's default, or
//                         PrivateKeyJwt with billing-api's RS256 key, which signs the issuer
//                         as aud)
//   exchange              RFC 8693 token exchange of a workload JWT via genericGrantRequest
//   introspect TOKEN      tokenIntrospection as the key's audience (customers-db)
//   revoke TOKEN          tokenRevocation as the key's own service (billing-api)
//   refusals              every refusal, reported as the error openid-client threw
//
// The broker's URL and credentials come from the environment variable INTEROP_CONFIG (JSON:
// issuer, billing_secret, billing_key_pem, customers_secret, subject_token, audience,
// unknown_audience, details, refused_details). The only option beyond the library's defaults is
// allowInsecureRequests, for plain http on loopback. Prints one JSON object.
import * as client from 'openid-client';
import { importPKCS8 } from 'jose';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

const config = JSON.parse(process.env.INTEROP_CONFIG ?? '{}');

async function discover(clientId, secret, auth) {
  return client.discovery(new URL(config.issuer), clientId, secret, auth, {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests],
    timeout: 30,
  });
}

async function billing(method = 'post', secret = config.billing_secret) {
  if (method === 'private_key_jwt') {
    const key = await importPKCS8(config.billing_key_pem, 'RS256');
    return discover('billing-api', undefined, client.PrivateKeyJwt(key));
  }
  // ClientSecretPost is what openid-client uses when given a secret and no method.
  const auth = method === 'basic' ? client.ClientSecretBasic(secret) : undefined;
  return discover('billing-api', secret, auth);
}

function customers() {
  return discover(config.audience, config.customers_secret, client.ClientSecretBasic());
}

function grantParameters(extra = {}) {
  return {
    audience: config.audience,
    authorization_details: JSON.stringify(config.details),
    ...extra,
  };
}

async function describe(promise) {
  try {
    const value = await promise;
    return { ok: true, value };
  } catch (err) {
    const out = { ok: false, class: err?.constructor?.name, message: err?.message };
    if (err instanceof client.ResponseBodyError) {
      Object.assign(out, {
        responseBodyError: true,
        error: err.error,
        error_description: err.error_description,
        status: err.status,
      });
    } else if (err instanceof client.WWWAuthenticateChallengeError) {
      // openid-client's error for a 401 that carries a challenge (RFC 6749 §5.2): the
      // challenges, and the response, whose OAuth error body it hands over unread.
      const body = await err.response.json().catch(() => null);
      Object.assign(out, {
        challengeError: true,
        status: err.status,
        challenges: err.cause,
        error: body?.error,
        error_description: body?.error_description,
      });
    }
    return out;
  }
}

const commands = {
  async discover() {
    const cfg = await billing();
    return { metadata: cfg.serverMetadata() };
  },

  async grant(method) {
    const cfg = await billing(method);
    const response = await client.clientCredentialsGrant(cfg, grantParameters());
    return { metadata: cfg.serverMetadata(), response };
  },

  async exchange() {
    const cfg = await billing('basic');
    const response = await client.genericGrantRequest(
      cfg,
      TOKEN_EXCHANGE,
      grantParameters({
        subject_token: config.subject_token,
        subject_token_type: JWT_TOKEN_TYPE,
      }),
    );
    return { metadata: cfg.serverMetadata(), response };
  },

  async introspect(token) {
    const cfg = await customers();
    return { response: await client.tokenIntrospection(cfg, token) };
  },

  async revoke(token) {
    const cfg = await billing('post');
    await client.tokenRevocation(cfg, token, { token_type_hint: 'access_token' });
    return { revoked: true };
  },

  async refusals() {
    const good = await billing('post');
    const wrongPost = await billing('post', 'pkbs_wrong-secret');
    const wrongBasic = await billing('basic', 'pkbs_wrong-secret');
    const wrongReader = await discover(config.audience, 'pkbs_wrong', client.ClientSecretBasic());
    return {
      wrong_secret_post: await describe(client.clientCredentialsGrant(wrongPost, grantParameters())),
      wrong_secret_basic: await describe(
        client.clientCredentialsGrant(wrongBasic, grantParameters()),
      ),
      unknown_audience: await describe(
        client.clientCredentialsGrant(good, grantParameters({ audience: config.unknown_audience })),
      ),
      refused_fields: await describe(
        client.clientCredentialsGrant(
          good,
          grantParameters({ authorization_details: JSON.stringify(config.refused_details) }),
        ),
      ),
      unsupported_grant: await describe(
        client.genericGrantRequest(good, 'urn:ietf:params:oauth:grant-type:device_code', {
          device_code: 'no-such-device',
        }),
      ),
      bad_subject_token: await describe(
        client.genericGrantRequest(
          good,
          TOKEN_EXCHANGE,
          grantParameters({ subject_token: 'not-a-jwt', subject_token_type: JWT_TOKEN_TYPE }),
        ),
      ),
      introspect_wrong_secret: await describe(client.tokenIntrospection(wrongReader, 'x.y.z')),
      revoke_wrong_secret: await describe(client.tokenRevocation(wrongPost, 'x.y.z')),
    };
  },
};

const [command, arg] = process.argv.slice(2);
if (!(command in commands)) {
  console.log(JSON.stringify({ error: `unknown command ${command}` }));
  process.exit(2);
}
try {
  console.log(JSON.stringify(await commands[command](arg)));
} catch (err) {
  const out = { error: err?.message, class: err?.constructor?.name, code: err?.code };
  if (err instanceof client.ResponseBodyError) {
    Object.assign(out, { oauth_error: err.error, status: err.status });
  }
  console.log(JSON.stringify(out));
  process.exit(1);
}
