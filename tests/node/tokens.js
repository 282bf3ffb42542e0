// Broker-token interop with the original implementation's library (jsonwebtoken).
// stdin: {"key": "...", "token": "<signed by Python>"}
// stdout: {"verified": <claims or null>, "error": <message or null>, "signed": "<token with the original's claims>"}
'use strict';
const crypto = require('crypto');
const jwt = require('jsonwebtoken');

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const { key, token } = JSON.parse(input);
  let verified = null;
  let error = null;
  try {
    verified = jwt.verify(token, key, { algorithms: ['HS256'] });
  } catch (err) {
    error = err.message;
  }
  // Exactly what the original BrokerTokenManager.generateToken signs (noTimestamp: true).
  const payload = {
    id: crypto.randomBytes(16).toString('hex'),
    type: 'broker',
    version: '1.0',
    source: 'exprsn-node-service',
    target: 'exprsn-timeline',
    operation: 'event',
    exp: Math.floor((Date.now() + 300 * 1000) / 1000),
    stateful: false,
    stateKey: null,
    rateLimitExempt: true,
    authBypass: true,
    data: { hello: 'from node', n: 42 },
    metadata: { event: 'post:created' },
  };
  const signed = jwt.sign(payload, key, { algorithm: 'HS256', noTimestamp: true });
  process.stdout.write(JSON.stringify({ verified, error, signed }) + '\n');
});
