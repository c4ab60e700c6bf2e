// A real OpenID provider for the single sign-on tests, on loopback only.
//
// Environment:
//   PORT            the port (127.0.0.1); the issuer is http://127.0.0.1:PORT
//   OIDC_CLIENTS    JSON list of clients: [{"client_id", "client_secret", "redirect_uris"}]
//   OIDC_ACCOUNTS   JSON object: login name -> {"email", "email_verified"}
//   OIDC_KEYS_FILE  the signing keys (a private JWKS); made when missing. Start
//                   again with another file to rotate the keys.
//   OIDC_PUBLISH_FILE  optional: publish this JWKS instead of the signing keys'
//                   public halves (tokens then carry a key nobody can check).
//
// The login form is oidc-provider's development interaction: any login name that
// OIDC_ACCOUNTS knows, any password. Prints "listening <issuer>" when ready.
import fs from 'node:fs';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS || '{}');
const clients = JSON.parse(process.env.OIDC_CLIENTS || '[]');

function keys() {
  const file = process.env.OIDC_KEYS_FILE;
  if (file && fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  jwk.kid = crypto.randomBytes(8).toString('hex');
  jwk.use = 'sig';
  jwk.alg = 'RS256';
  const jwks = { keys: [jwk] };
  if (file) fs.writeFileSync(file, JSON.stringify(jwks));
  return jwks;
}

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...c,
  })),
  jwks: keys(),
  findAccount: async (ctx, sub) => {
    const a = accounts[sub];
    if (!a) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...a }) };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
});
provider.proxy = false;

const publish = process.env.OIDC_PUBLISH_FILE;
const callback = provider.callback();
const server = (await import('node:http')).createServer((req, res) => {
  if (publish && req.url.startsWith('/jwks')) {
    res.setHeader('content-type', 'application/jwk-set+json');
    res.end(fs.readFileSync(publish, 'utf8'));
    return;
  }
  callback(req, res);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
