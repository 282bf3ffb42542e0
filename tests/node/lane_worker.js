// A Node.js socket.io-client v4 on the Bridge's worker lane: it asks for the lane
// (query protocol=exprsn-ipc/1) and speaks the IPC workers' protocol, exchanging
// signed envelopes. Driven by tests/interop/test_node_worker_lane.py.
//
//   node lane_worker.js <bridge-url>
//   env: IPC_BROKER_KEY (required), SERVICE_NAME (default exprsn-timeline),
//        PEER_SERVICE (default exprsn-herald): the Python worker it talks to.
//
// stdout: one JSON object per line, {"step": <name>, ...}. After
// {"step":"listening"} the test emits lane:ping to SERVICE_NAME; the script
// reports it, publishes lane:pong to PEER_SERVICE, and runs the refusal checks.
'use strict';
const crypto = require('crypto');
const jwt = require('jsonwebtoken');
const { io } = require('socket.io-client');

const URL = (process.argv[2] || '').replace(/\/$/, '');
const KEY = process.env.IPC_BROKER_KEY;
const SERVICE = process.env.SERVICE_NAME || 'exprsn-timeline';
const PEER = process.env.PEER_SERVICE || 'exprsn-herald';
const PROTOCOL = 'exprsn-ipc/1';
const STEP_TIMEOUT = 5000;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

if (!URL || !KEY) {
  out({ step: 'error', error: 'usage: node lane_worker.js <bridge-url> with IPC_BROKER_KEY set' });
  process.exit(2);
}

// The original's broker token claims; for an envelope, bound to its event,
// source, target and data the way the Python workers check them.
function brokerToken(key, { target = 'exprsn-bridge', event = 'connect', data = {}, operation = 'connect' } = {}) {
  const claims = {
    id: crypto.randomBytes(16).toString('hex'),
    type: 'broker',
    version: '1.0',
    source: SERVICE,
    target,
    operation,
    exp: Math.floor((Date.now() + 300 * 1000) / 1000),
    stateful: false,
    stateKey: null,
    rateLimitExempt: false,
    authBypass: false,
    data,
    metadata: { event },
  };
  return jwt.sign(claims, key, { algorithm: 'HS256', noTimestamp: true });
}

function envelope(event, data, target) {
  return JSON.stringify({
    event,
    data,
    source: SERVICE,
    target,
    operation: 'event',
    token: brokerToken(KEY, { target, event, data, operation: 'event' }),
    requireAck: false,
    timestamp: Date.now(),
    metadata: {},
  });
}

function withTimeout(promise, what, ms = STEP_TIMEOUT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function connect(auth) {
  const socket = io(URL + '/ipc/' + SERVICE, {
    auth,
    query: { protocol: PROTOCOL },
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
  });
  const ready = new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => reject(err));
  });
  return { socket, ready };
}

async function refused(auth, what) {
  const { socket, ready } = connect(auth);
  try {
    await withTimeout(ready, what);
    return { step: what, refused: false };
  } catch (err) {
    return { step: what, refused: true, message: err.message, data: err.data || null };
  } finally {
    socket.close();
  }
}

async function main() {
  const { socket, ready } = connect({ token: brokerToken(KEY), protocol: PROTOCOL });
  const received = new Promise((resolve) => {
    const take = (channel, raw) => {
      const message = JSON.parse(raw);
      if (message.event === 'lane:ping') resolve({ channel, message });
    };
    socket.on('ipc:message', take);
    socket.on('ipc:messages', (items) => items.forEach(([channel, raw]) => take(channel, raw)));
  });
  const errors = [];
  socket.on('ipc:error', (body) => errors.push(body));
  await withTimeout(ready, 'connect');
  out({ step: 'connected', id: socket.id });

  const services = await withTimeout(socket.timeout(STEP_TIMEOUT).emitWithAck('ipc:services', null), 'ipc:services');
  out({ step: 'services', success: services.success, names: services.data.map((entry) => entry.name) });

  out({ step: 'listening' });
  const { channel, message } = await withTimeout(received, 'lane:ping');
  out({ step: 'received', channel, event: message.event, source: message.source, data: message.data });

  const published = await withTimeout(
    socket.timeout(STEP_TIMEOUT).emitWithAck('ipc:publish', envelope('lane:pong', { seen: message.data }, PEER)),
    'ipc:publish',
  );
  out({ step: 'published', answer: published });

  const unknown = await withTimeout(socket.timeout(STEP_TIMEOUT).emitWithAck('ipc:nope', { x: 1 }), 'ipc:nope');
  out({ step: 'unknown', answer: unknown, errors });
  socket.close();

  out(await refused({ token: brokerToken('a-different-key-' + 'x'.repeat(40)), protocol: PROTOCOL }, 'forged'));
  out(await refused({ token: brokerToken(KEY) }, 'no-protocol'));
  out(await refused({ protocol: PROTOCOL }, 'no-token'));
  out({ step: 'done' });
}

main().then(
  () => process.exit(0),
  (err) => {
    out({ step: 'error', error: String(err && err.stack ? err.stack : err) });
    process.exit(1);
  },
);
