// A Node.js Socket.IO client (socket.io-client v4, as in the original services)
// talking to the Python Bridge. Driven by tests/interop/test_node_socketio.py.
//
//   node socketio_client.js <bridge-url>      (or BRIDGE_URL)
//   env: IPC_BROKER_KEY (required), SERVICE_NAME (default exprsn-timeline),
//        FORWARD_EVENT (default post:created), WORKER_SERVICE (default exprsn-herald)
//
// stdout: one JSON object per line, {"step": <name>, ...}. After
// {"step":"listening"} the test emits FORWARD_EVENT to SERVICE_NAME; the script
// reports it once per namespace. The last line is {"step":"done"}.
// stdin: {"cmd":"quit"} ends the script early.
'use strict';
const crypto = require('crypto');
const readline = require('readline');
const jwt = require('jsonwebtoken');
const { io } = require('socket.io-client');

const URL = (process.argv[2] || process.env.BRIDGE_URL || '').replace(/\/$/, '');
const KEY = process.env.IPC_BROKER_KEY;
const SERVICE = process.env.SERVICE_NAME || 'exprsn-timeline';
const SHORT = SERVICE.replace(/^exprsn-/, '');
const FORWARD_EVENT = process.env.FORWARD_EVENT || 'post:created';
const WORKER = process.env.WORKER_SERVICE || 'exprsn-herald';
const STEP_TIMEOUT = 5000;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

if (!URL || !KEY) {
  out({ step: 'error', error: 'usage: node socketio_client.js <bridge-url> with IPC_BROKER_KEY set' });
  process.exit(2);
}

// Exactly the original BrokerTokenManager.generateToken claims (noTimestamp: true).
function brokerToken(source, operation) {
  const payload = {
    id: crypto.randomBytes(16).toString('hex'),
    type: 'broker',
    version: '1.0',
    source,
    target: 'exprsn-bridge',
    operation,
    exp: Math.floor((Date.now() + 300 * 1000) / 1000),
    stateful: false,
    stateKey: null,
    rateLimitExempt: true,
    authBypass: false,
    data: {},
    metadata: { event: 'connect' },
  };
  return jwt.sign(payload, KEY, { algorithm: 'HS256', noTimestamp: true });
}

function withTimeout(promise, what, ms = STEP_TIMEOUT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function connect(namespace, auth, options = {}) {
  const socket = io(URL + namespace, {
    auth,
    transports: ['websocket'],
    reconnection: false,
    rejectUnauthorized: false,
    ...options,
  });
  const ready = new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => reject(err));
  });
  return { socket, ready };
}

function emitAndWait(socket, body) {
  return new Promise((resolve) => {
    const done = (event) => (data) => {
      socket.off('ipc:ack', onAck);
      socket.off('ipc:error', onError);
      resolve({ event, body: data });
    };
    const onAck = done('ipc:ack');
    const onError = done('ipc:error');
    socket.on('ipc:ack', onAck);
    socket.on('ipc:error', onError);
    socket.emit('ipc:emit', body);
  });
}

const sockets = [];

async function main() {
  // 1. Both namespace spellings of one service.
  const namespaces = [`/ipc/${SERVICE}`, `/ipc/${SHORT}`];
  const connected = {};
  for (const namespace of namespaces) {
    const { socket, ready } = connect(namespace, { token: brokerToken(SERVICE, 'connect') });
    sockets.push(socket);
    try {
      await withTimeout(ready, `connect ${namespace}`);
      connected[namespace] = socket;
      out({ step: 'connect', namespace, ok: true, id: socket.id });
    } catch (err) {
      out({ step: 'connect', namespace, ok: false, error: err.message, data: err.data || null });
    }
  }
  const primary = connected[namespaces[0]];
  if (!primary) throw new Error(`cannot continue without ${namespaces[0]}`);

  // 2. ipc:emit -> ipc:ack (broadcast, the original test's body).
  const ack = await withTimeout(
    emitAndWait(primary, {
      event: 'test:ping',
      payload: { message: 'Hello from Node', timestamp: Date.now() },
      target: 'broadcast',
      options: { requireAck: true },
    }),
    'ipc:ack',
  );
  out({ step: 'emit', ...ack });

  // 3. ipc:emit to a Python worker, claiming another source in options.
  const toWorker = await withTimeout(
    emitAndWait(primary, {
      event: 'node:hello',
      payload: { from: 'node', n: 1 },
      target: WORKER,
      options: { source: 'exprsn-auth' },
    }),
    'ipc:ack to worker',
  );
  out({ step: 'emit-worker', ...toWorker });

  // 4. An event forwarded from a Python worker reaches both namespaces as (data, meta).
  const arrivals = Object.entries(connected).map(
    ([namespace, socket]) =>
      new Promise((resolve) => {
        socket.once(FORWARD_EVENT, (data, meta) => {
          out({ step: 'received', namespace, event: FORWARD_EVENT, data, meta });
          resolve();
        });
      }),
  );
  out({ step: 'listening', event: FORWARD_EVENT });
  try {
    await withTimeout(Promise.all(arrivals), FORWARD_EVENT, 10000);
  } catch (err) {
    out({ step: 'received', ok: false, error: err.message });
  }

  // 5. CRUD through the Bridge's built-in store, and JSONLex.
  const call = (event, body) => primary.timeout(STEP_TIMEOUT).emitWithAck(event, body);
  out({
    step: 'create',
    response: await call('ipc:create', {
      resource: 'test_items',
      data: { name: 'Test Item', value: 42, timestamp: Date.now() },
      options: {},
    }),
  });
  out({ step: 'read', response: await call('ipc:read', { resource: 'test_items', query: {}, options: {} }) });
  out({
    step: 'jsonlex',
    response: await call('ipc:jsonlex', {
      expression: {
        __jsonlex: true,
        expr: {
          fullName: { $concat: [{ $var: 'firstName' }, ' ', { $var: 'lastName' }] },
          age: { $var: 'age' },
          isAdult: { $gte: [{ $var: 'age' }, 18] },
        },
      },
      context: { firstName: 'John', lastName: 'Doe', age: 25 },
      options: {},
    }),
  });

  // 6. No token: a clear connect_error outside development.
  const { socket: anonymous, ready } = connect(`/ipc/${SHORT}`, undefined, { forceNew: true });
  sockets.push(anonymous);
  try {
    await withTimeout(ready, 'tokenless connect');
    out({ step: 'unauthorized', ok: false, error: 'connected without a token' });
  } catch (err) {
    out({ step: 'unauthorized', ok: true, message: err.message, data: err.data || null });
  }
}

const stdin = readline.createInterface({ input: process.stdin });
stdin.on('line', (line) => {
  try {
    if (JSON.parse(line).cmd === 'quit') finish(0);
  } catch (err) {
    out({ step: 'error', error: `bad command: ${err.message}` });
  }
});

function finish(code) {
  for (const socket of sockets) socket.close();
  stdin.close();
  process.exit(code);
}

main().then(
  () => {
    out({ step: 'done' });
    finish(0);
  },
  (err) => {
    out({ step: 'error', error: err.message });
    finish(1);
  },
);
