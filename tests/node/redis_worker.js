#!/usr/bin/env node
// A Node.js IPC worker that speaks the ORIGINAL Exprsn IPC protocol on Redis,
// written for the interop tests (not a copy of the original: it follows the
// behaviour described in exprsn-ipc-reference.md §1.2-2.6).
//
//   - three ioredis connections like the original: pub/sub with keyPrefix 'ipc:'
//     (the prefix does not apply to channels) and data with keyPrefix 'ipc:data:';
//   - channels ipc:<name> and ipc:broadcast; registry services:<name> SETEX 60;
//   - envelope keys event,data,source,target,operation,token,requireAck,timestamp,metadata;
//   - HS256 broker tokens (jsonwebtoken, noTimestamp) with the original's claims;
//   - verification: decode + type, revocation GET token:<id>, jwt.verify, exp,
//     then the target check; unsigned acks for requireAck, as the original sends.
//
// Driven through stdin/stdout, one JSON object per line:
//   in : {"id": 1, "cmd": "emit"|"prepare"|"publish"|"revoke"|"verify"|"quit", ...}
//   out: {"type": "ready"} | {"type": "result", "id": 1, ...} | {"type": "received", ...}
//        | {"type": "rejected", ...} | {"type": "ack-sent", ...} | {"type": "fatal", ...}
'use strict';

const crypto = require('crypto');
const readline = require('readline');
const Redis = require('ioredis');
const jwt = require('jsonwebtoken');

const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379/0';
const key = process.env.IPC_BROKER_KEY;
const serviceName = process.env.SERVICE_NAME || 'exprsn-node';
const namespace = 'ipc';
const authBypass = process.env.NODE_ENV !== 'production' && process.env.IPC_BYPASS_AUTH !== 'false';

if (!key) {
  process.stdout.write(JSON.stringify({ type: 'fatal', error: 'IPC_BROKER_KEY is required' }) + '\n');
  process.exit(2);
}

const pub = new Redis(url, { keyPrefix: 'ipc:' });
const sub = new Redis(url, { keyPrefix: 'ipc:' });
const data = new Redis(url, { keyPrefix: 'ipc:data:' });

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function channelFor(target) {
  return target === 'broadcast' ? `${namespace}:broadcast` : `${namespace}:${target}`;
}

// Broker tokens ---------------------------------------------------------------------
async function generateToken(payload, targetService, operation, ttl, metadata) {
  const id = crypto.randomBytes(16).toString('hex');
  const now = Date.now();
  const claims = {
    id,
    type: 'broker',
    version: '1.0',
    source: serviceName,
    target: targetService,
    operation,
    exp: Math.floor((now + ttl * 1000) / 1000),
    stateful: false,
    stateKey: null,
    rateLimitExempt: true,
    authBypass,
    data: payload === undefined ? {} : payload,
    metadata,
  };
  const token = jwt.sign(claims, key, { algorithm: 'HS256', noTimestamp: true });
  const record = {
    id,
    source: serviceName,
    target: targetService,
    operation,
    created: now,
    expires: now + ttl * 1000,
    stateful: false,
    revoked: false,
  };
  await data.setex(`token:${id}`, ttl, JSON.stringify(record));
  return { id, token };
}

async function isRevoked(id) {
  const raw = await data.get(`token:${id}`);
  if (!raw) return false; // the original is fail-open on a missing record
  return JSON.parse(raw).revoked === true;
}

async function verifyToken(token) {
  try {
    const decoded = jwt.decode(token);
    if (!decoded || decoded.type !== 'broker') throw new Error('Invalid broker token type');
    if (await isRevoked(decoded.id)) throw new Error('Token has been revoked');
    const claims = jwt.verify(token, key, { algorithms: ['HS256'] });
    if (!claims.stateful && claims.exp && Math.floor(Date.now() / 1000) > claims.exp) {
      throw new Error('Token has expired');
    }
    return claims;
  } catch (err) {
    throw new Error(`Token verification failed: ${err.message}`);
  }
}

async function revokeToken(id) {
  const raw = await data.get(`token:${id}`);
  if (!raw) return false;
  const record = JSON.parse(raw);
  record.revoked = true;
  record.revokedAt = Date.now();
  await data.setex(`token:${id}`, 86400, JSON.stringify(record));
  return true;
}

// Envelopes -------------------------------------------------------------------------
async function buildEnvelope(event, payload, options) {
  const target = options.target || 'broadcast';
  const operation = options.operation || 'event';
  const ttl = options.ttl || 300;
  const metadata = options.metadata || {};
  const { id, token } = await generateToken(payload, target, operation, ttl, { event, ...metadata });
  const message = {
    event,
    data: payload,
    source: serviceName,
    target,
    operation,
    token,
    requireAck: options.requireAck || false,
    timestamp: Date.now(),
    metadata,
  };
  return { id, message, channel: channelFor(target) };
}

async function handleMessage(channel, raw) {
  let message;
  try {
    message = JSON.parse(raw);
  } catch (err) {
    out({ type: 'rejected', channel, error: `Failed to parse IPC message: ${err.message}` });
    return;
  }
  let claims;
  try {
    claims = await verifyToken(message.token);
  } catch (err) {
    out({ type: 'rejected', channel, event: message.event, source: message.source, error: `Message handling failed: ${err.message}` });
    return;
  }
  if (message.target !== serviceName && message.target !== 'broadcast') return;
  out({ type: 'received', channel, raw, message, claims, claimKeys: Object.keys(claims) });
  if (message.requireAck) {
    // The original's ack: no token, so every receiver rejects it.
    const ack = {
      event: 'ack',
      data: { originalEvent: message.event, originalId: message.token },
      source: serviceName,
      target: message.source,
      operation: 'ack',
      timestamp: Date.now(),
    };
    const receivers = await pub.publish(channelFor(message.source), JSON.stringify(ack));
    out({ type: 'ack-sent', to: message.source, receivers });
  }
}

// Commands --------------------------------------------------------------------------
async function run(cmd) {
  switch (cmd.cmd) {
    case 'emit': {
      const built = await buildEnvelope(cmd.event, cmd.data, cmd);
      const raw = JSON.stringify(built.message);
      const receivers = await pub.publish(built.channel, raw);
      return { tokenId: built.id, raw, channel: built.channel, receivers };
    }
    case 'prepare': {
      const built = await buildEnvelope(cmd.event, cmd.data, cmd);
      return { tokenId: built.id, raw: JSON.stringify(built.message), channel: built.channel };
    }
    case 'publish':
      return { receivers: await pub.publish(cmd.channel, cmd.raw) };
    case 'revoke':
      return { revoked: await revokeToken(cmd.tokenId) };
    case 'verify':
      try {
        return { ok: true, claims: await verifyToken(cmd.token) };
      } catch (err) {
        return { ok: false, reason: err.message };
      }
    case 'quit':
      await Promise.all([pub.quit(), sub.quit(), data.quit()]);
      return { bye: true };
    default:
      throw new Error(`unknown command ${cmd.cmd}`);
  }
}

async function main() {
  sub.on('message', (channel, raw) => {
    handleMessage(channel, raw).catch((err) => out({ type: 'rejected', channel, error: err.message }));
  });
  await sub.subscribe(`${namespace}:${serviceName}`);
  await sub.subscribe(`${namespace}:broadcast`);
  const now = Date.now();
  await data.setex(
    `services:${serviceName}`,
    60,
    JSON.stringify({ name: serviceName, namespace, pid: process.pid, hostname: require('os').hostname(), registered: now, lastSeen: now }),
  );
  out({ type: 'ready', service: serviceName, pid: process.pid });

  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      out({ type: 'fatal', error: `bad command line: ${err.message}` });
      return;
    }
    run(cmd)
      .then((result) => {
        out({ type: 'result', id: cmd.id, ...result });
        if (cmd.cmd === 'quit') process.exit(0);
      })
      .catch((err) => out({ type: 'result', id: cmd.id, error: err.message }));
  });
  rl.on('close', () => process.exit(0));
}

main().catch((err) => {
  out({ type: 'fatal', error: err.message });
  process.exit(1);
});
