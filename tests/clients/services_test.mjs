// SPDX-License-Identifier: BSD-3-Clause
//
// @jupyterlab/services (the JupyterLab client library, 7.x) in Node, driving the gateway directly.
// The whole suite runs three times:
//   v1      the library's default: it offers the `v1.kernel.websocket.jupyter.org` subprotocol;
//   legacy  the WebSocket class is wrapped so that it offers no subprotocol, so the server must speak
//           legacy JSON text frames (and legacy binary frames for messages with buffers);
//   front   the library talks to Debian's Jupyter Server 1.23 started with --gateway-url pointing at
//           the gateway, so that server's GatewayClient (legacy frames, no subprotocol, no session_id)
//           is the gateway's client, as in a real deployment; the library talks legacy to the server.
//           Three scenarios are not run in this mode because Jupyter Server 1.23 itself breaks them,
//           whatever the gateway does: replay after a reconnect (it does not forward session_id
//           upstream; fixed in 2.x), binary comm buffers (it forwards a client's binary frame upstream
//           as a text frame), and a second client (a message sent before its upstream websocket exists
//           waits on a future that is replaced and never resolved, so it can be lost).
//
// Run: node --test tests/clients/services_test.mjs   (needs `npm ci --prefix tests/clients` first;
// the gateway comes from KG_BIN, or KG_REFERENCE=jupyter-server; see lib/gateway.mjs).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import {
  requireNodeModules, startGateway, startGatewayFront, withDeadline, waitUntil, dumpLogsOnFailure,
} from './lib/gateway.mjs';

// Fails the file (never skips) with instructions when the dependencies are not installed.
requireNodeModules(['@jupyterlab/services', 'ws']);
const {
  KernelManager, KernelSpecManager, SessionManager, ServerConnection, KernelAPI, KernelSpecAPI, SessionAPI,
} = await import('@jupyterlab/services');
const { default: WebSocket } = await import('ws');

// @lumino/polling's Poll.dispose() leaves its next tick scheduled (up to 61 s for KernelSpecManager), which
// would keep this process alive long after the last test. Unref the timers that library schedules.
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = function setTimeoutUnrefPolls(fn, ms, ...args) {
  const t = realSetTimeout(fn, ms, ...args);
  if (ms >= 1000 && /@lumino[\\/]polling/.test(new Error().stack)) t.unref();
  return t;
};

const V1 = 'v1.kernel.websocket.jupyter.org';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const STEP_TIMEOUT = 30_000; // per test
const EXEC_TIMEOUT = 20_000; // per execute request

/**
 * A TCP socket that holds back everything written to it until `delayMs` after its creation: the
 * connection is made at once, but the server sees the WebSocket upgrade request only later.
 */
class DelayedWriteSocket extends net.Socket {
  constructor(delayMs) {
    super();
    this.releaseAt = Date.now() + delayMs;
  }
  _later(fn) {
    const wait = this.releaseAt - Date.now();
    if (wait > 0) setTimeout(fn, wait);
    else fn();
  }
  _write(chunk, encoding, cb) {
    this._later(() => super._write(chunk, encoding, cb));
  }
  _writev(chunks, cb) {
    this._later(() => super._writev(chunks, cb));
  }
}

/**
 * A `ws` WebSocket subclass that records what was offered, what the server chose and the frame kinds.
 * With `offer` false it offers no subprotocol at all.
 * `control.delayNextMs` > 0 makes the next socket send its upgrade request that much later.
 */
function recordingWebSocket(offer, sockets, control) {
  return class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      const offered = offer ? [].concat(protocols ?? []) : [];
      const delayMs = control.delayNextMs;
      control.delayNextMs = 0;
      const options = {};
      if (delayMs > 0) {
        options.createConnection = (opts) => {
          const sock = new DelayedWriteSocket(delayMs);
          return sock.connect({ ...opts, path: opts.socketPath });
        };
      }
      super(url, offered, options);
      const entry = {
        url: String(url), offered, frames: { text: 0, binary: 0 }, binaryMsgTypes: [], received: [], ws: this,
        createdAt: Date.now(), openedAt: null,
      };
      sockets.push(entry);
      this.on('open', () => {
        entry.openedAt = Date.now();
      });
      this.on('message', (data, isBinary) => {
        entry.frames[isBinary ? 'binary' : 'text']++;
        if (entry.received.length < 500) entry.received.push(describeFrame(data, isBinary, this.protocol));
        if (isBinary && this.protocol === '') entry.binaryMsgTypes.push(legacyBinaryMsgType(data));
      });
    }
  };
}

/** "channel:msg_type" of a frame in any of the three formats (for diagnostics). */
function describeFrame(data, isBinary, protocol) {
  try {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
    if (!isBinary) {
      const m = JSON.parse(buf.toString('utf8'));
      return `${m.channel}:${m.header?.msg_type}`;
    }
    if (protocol === V1) {
      const n = Number(buf.readBigUInt64LE(0));
      const off = (i) => Number(buf.readBigUInt64LE(8 * (i + 1)));
      const channel = buf.subarray(off(0), off(1)).toString('utf8');
      const header = JSON.parse(buf.subarray(off(1), off(2)).toString('utf8'));
      return n > 2 ? `${channel}:${header.msg_type}` : channel;
    }
    return `binary:${legacyBinaryMsgType(buf)}`;
  } catch (e) {
    return `unparseable(${e.message})`;
  }
}

/** msg_type of a legacy binary frame (big-endian uint32 count, offsets, JSON part first). */
function legacyBinaryMsgType(data) {
  try {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
    const n = buf.readUInt32BE(0);
    const start = buf.readUInt32BE(4);
    const end = n > 1 ? buf.readUInt32BE(8) : buf.length;
    return JSON.parse(buf.subarray(start, end).toString('utf8')).header.msg_type;
  } catch (e) {
    return `unparseable legacy binary frame: ${e.message}`;
  }
}

function bytesOf(view) {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

function sha256(u8) {
  return createHash('sha256').update(u8).digest('hex');
}

/** Execute `code`, collect iopub, resolve when the reply and the idle status have both arrived. */
async function execute(kernel, code, { onStdin, timeoutMs = EXEC_TIMEOUT, onIOPub } = {}) {
  const future = kernel.requestExecute({ code, allow_stdin: Boolean(onStdin), stop_on_error: false });
  const iopub = [];
  future.onIOPub = (msg) => {
    iopub.push(msg);
    if (onIOPub) onIOPub(msg, future);
  };
  if (onStdin) future.onStdin = (msg) => onStdin(msg, future);
  const reply = await withDeadline(future.done, timeoutMs, `execute reply and idle for ${JSON.stringify(code)}`);
  const stream = (name) =>
    iopub.filter((m) => m.header.msg_type === 'stream' && m.content.name === name).map((m) => m.content.text).join('');
  return { reply, iopub, stdout: stream('stdout'), stderr: stream('stderr') };
}

/**
 * kernel.info through a Jupyter Server 1.23 front. That front can lose the first message a client
 * sends on a new kernel WebSocket: its GatewayWebSocketClient opens its own connection to the
 * gateway in a spawned callback, and a message that arrives before that callback has run is chained
 * on a placeholder future that never resolves (jupyter_server/gateway/handlers.py, on_message with
 * self.ws None). Frames sent together with the upgrade request hit that window every time: the front
 * never answers them, while kernelgate does (tests/faults checks kernelgate's side). The library's
 * own kernel_info_request is that first message, so, like Jupyter Server's nudge (and
 * tests/integration's), ask again every 2 s until a reply comes. Without a front one request must
 * do.
 */
async function kernelInfoThroughFront(kernel) {
  let done = false;
  const info = kernel.info.then((v) => {
    done = true;
    return v;
  });
  for (let i = 0; i < 9 && !done; i++) {
    await Promise.race([info, new Promise((r) => realSetTimeout(r, 2000))]);
    if (!done && !kernel.isDisposed) {
      process.stderr.write('# front: no kernel_info_reply yet; asking again (the front can lose a first message)\n');
      kernel.requestKernelInfo().catch(() => {});
    }
  }
  return info;
}

/** The websockets opened by one KernelConnection (same kernel, same client session id), oldest first. */
function kernelSockets(sockets, conn) {
  return sockets.filter((s) => {
    const u = new URL(s.url);
    return u.pathname.endsWith(`/api/kernels/${conn.id}/channels`) && u.searchParams.get('session_id') === conn.clientId;
  });
}

const MODES = [
  { name: 'v1', title: 'the v1 subprotocol', offer: true, front: null, protocol: V1, replay: true, buffers: true, multi: true },
  { name: 'legacy', title: 'the legacy protocol', offer: false, front: null, protocol: '', replay: true, buffers: true, multi: true },
  {
    // Jupyter Server 1.23 answers no subprotocol; `ws` (unlike browsers) then fails the socket and the
    // library retries without one, so offer none from the start.
    name: 'front', title: 'Jupyter Server 1.23 with --gateway-url (legacy on both hops)',
    offer: false, front: 'jupyter-server', protocol: '', replay: false, buffers: false, multi: false,
  },
];

for (const { name: mode, title, offer, front: frontKind, protocol, replay, buffers, multi } of MODES) {
  describe(`@jupyterlab/services over ${title}`, () => {
    let gw;
    let front; // the --gateway-url server in `front` mode
    let server; // what the library talks to: {baseUrl, wsUrl, token}
    let serverSettings;
    let kernelManager;
    let specManager;
    let sessionManager;
    let kernel;
    let kernelPid;
    const sockets = [];
    const wsControl = { delayNextMs: 0 };

    /** GET /api/kernels/{id} on the gateway itself (not through the front). */
    async function gatewayKernel(id) {
      const r = await fetch(`${gw.baseUrl}/api/kernels/${id}`, { headers: { Authorization: `token ${gw.token}` } });
      return { status: r.status, model: await r.json().catch(() => null) };
    }

    let failed = false;
    // Every test body goes through this so that a failure prints the gateway log.
    const step = (name, fn) =>
      it(name, { timeout: STEP_TIMEOUT }, () =>
        dumpLogsOnFailure([gw, front?.proc], fn).catch((e) => {
          failed = true;
          throw e;
        }));

    before(async () => {
      gw = await startGateway({ label: `services-${mode}` });
      process.stderr.write(`# [${mode}] ${gw.kind} at ${gw.baseUrl}, log ${gw.logFile}\n`);
      server = gw;
      if (frontKind) {
        front = await dumpLogsOnFailure([gw], () => startGatewayFront(gw, { kind: frontKind }));
        process.stderr.write(`# [${mode}] ${frontKind} front at ${front.baseUrl}, log ${front.proc.logFile}\n`);
        server = front;
      }
      serverSettings = ServerConnection.makeSettings({
        baseUrl: `${server.baseUrl}/`,
        wsUrl: `${server.wsUrl}/`,
        token: server.token,
        appendToken: true,
        WebSocket: recordingWebSocket(offer, sockets, wsControl),
        fetch,
        Request,
        Headers,
      });
    });

    after(async () => {
      sessionManager?.dispose();
      kernelManager?.dispose();
      specManager?.dispose();
      for (const s of sockets) s.ws.terminate();
      if (front) await front.proc.stop();
      if (gw) await gw.stop();
      // Keep the temp root (logs, data dir) of a failed run for inspection.
      if (gw && !failed) gw.cleanup();
      else if (gw) process.stderr.write(`# [${mode}] kept ${gw.root}\n`);
    });

    step('lists kernelspecs, including python3 with resources', async () => {
      specManager = new KernelSpecManager({ serverSettings });
      await withDeadline(specManager.ready, 15_000, 'KernelSpecManager.ready');
      await specManager.refreshSpecs();
      const specs = specManager.specs;
      assert.ok(specs, 'no kernelspecs model');
      assert.ok(specs.kernelspecs.python3, `python3 missing from ${Object.keys(specs.kernelspecs)}`);
      assert.ok(specs.default in specs.kernelspecs, `default ${specs.default} is not a listed spec`);
      const py = specs.kernelspecs.python3;
      assert.equal(py.name, 'python3');
      assert.equal(py.language, 'python');
      assert.ok(py.display_name.length > 0);
      assert.ok(Array.isArray(py.argv) && py.argv.some((a) => a.includes('{connection_file}')), `argv ${py.argv}`);
      // Resource URLs must contain /kernelspecs/<name>/ and be fetchable.
      const logo = py.resources['logo-64x64'];
      assert.ok(logo, `no logo-64x64 in resources ${JSON.stringify(py.resources)}`);
      assert.match(logo, /\/kernelspecs\/python3\/logo-64x64\.png$/);
      const url = new URL(logo, `${server.baseUrl}/`);
      const r = await fetch(url, { headers: { Authorization: `token ${server.token}` } });
      const body = Buffer.from(await r.arrayBuffer());
      assert.equal(r.status, 200, `GET ${url} -> ${r.status}`);
      assert.ok(body.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), 'logo is not a PNG');
    });

    step('rejects a wrong token', async () => {
      const bad = ServerConnection.makeSettings({ ...serverSettings, token: 'not-the-token' });
      await assert.rejects(KernelSpecAPI.getSpecs(bad), (e) => {
        assert.ok(e instanceof ServerConnection.ResponseError, `unexpected ${e}`);
        assert.ok([401, 403].includes(e.response.status), `status ${e.response.status}`);
        return true;
      });
    });

    step('starts a python3 kernel and connects its websocket', async () => {
      kernelManager = new KernelManager({ serverSettings });
      await withDeadline(kernelManager.ready, 15_000, 'KernelManager.ready');
      kernel = await withDeadline(kernelManager.startNew({ name: 'python3' }), 60_000, 'KernelManager.startNew');
      assert.match(kernel.id, UUID_RE);
      assert.equal(kernel.name, 'python3');
      const info = await withDeadline(front ? kernelInfoThroughFront(kernel) : kernel.info, 20_000, 'kernel_info reply');
      assert.equal(info.language_info.name, 'python');
      assert.equal(info.status, 'ok');
      assert.match(info.protocol_version, /^5\./);
      await waitUntil(() => kernel.connectionStatus === 'connected', { timeoutMs: 10_000, what: 'connectionStatus connected' });

      const mine = kernelSockets(sockets, kernel);
      assert.equal(mine.length, 1, `expected one websocket to the kernel, saw ${mine.length}`);
      const [sock] = mine;
      assert.match(sock.url, /[?&]session_id=/, 'websocket URL carries no session_id');
      assert.match(sock.url, new RegExp(`[?&]token=${server.token}`), 'websocket URL carries no token');
      assert.deepEqual(sock.offered, offer ? [V1] : []);
      assert.equal(sock.ws.protocol, protocol, `server selected subprotocol '${sock.ws.protocol}'`);

      const running = await KernelAPI.listRunning(serverSettings);
      const model = running.find((k) => k.id === kernel.id);
      assert.ok(model, 'started kernel missing from GET /api/kernels');
      assert.equal(model.name, 'python3');
      assert.match(model.last_activity, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, `last_activity ${model.last_activity}`);
      assert.ok(model.connections >= 1, `connections ${model.connections}`);
      if (front) {
        // The kernel lives on the gateway, which has the front's GatewayClient connected to it.
        const g = await gatewayKernel(kernel.id);
        assert.equal(g.status, 200, `gateway does not know kernel ${kernel.id}`);
        assert.equal(g.model.name, 'python3');
        assert.match(g.model.last_activity, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, `gateway last_activity ${g.model.last_activity}`);
        await waitUntil(async () => (await gatewayKernel(kernel.id)).model.connections >= 1, {
          timeoutMs: 10_000,
          what: "the front's websocket to show in the gateway's connection count",
        });
      }
    });

    step('execute print(6*7) shows 42 on the iopub stream', async () => {
      const { reply, stdout, iopub } = await execute(kernel, 'print(6*7)');
      assert.equal(reply.content.status, 'ok');
      assert.equal(reply.channel, 'shell');
      assert.equal(stdout, '42\n');
      const types = iopub.map((m) => m.header.msg_type);
      assert.ok(types.includes('execute_input'), `iopub types ${types}`);
      const states = iopub.filter((m) => m.header.msg_type === 'status').map((m) => m.content.execution_state);
      assert.deepEqual(states, ['busy', 'idle']);
      for (const m of iopub) {
        assert.equal(m.channel, 'iopub');
        assert.equal(m.parent_header.msg_id, reply.parent_header.msg_id, 'iopub message with a foreign parent');
      }
    });

    step('execute_result carries text/plain and the execution count', async () => {
      const { reply, iopub } = await execute(kernel, '6*7');
      assert.equal(reply.content.status, 'ok');
      const results = iopub.filter((m) => m.header.msg_type === 'execute_result');
      assert.equal(results.length, 1, 'expected exactly one execute_result');
      assert.equal(results[0].content.data['text/plain'], '42');
      assert.equal(results[0].content.execution_count, reply.content.execution_count);
      assert.ok(reply.content.execution_count >= 2);
    });

    step('an exception gives an error reply and an iopub error', async () => {
      const { reply, iopub } = await execute(kernel, '1/0');
      assert.equal(reply.content.status, 'error');
      assert.equal(reply.content.ename, 'ZeroDivisionError');
      const errors = iopub.filter((m) => m.header.msg_type === 'error');
      assert.equal(errors.length, 1);
      assert.equal(errors[0].content.ename, 'ZeroDivisionError');
      assert.ok(Array.isArray(errors[0].content.traceback) && errors[0].content.traceback.length > 0);
    });

    step('input() is answered through the stdin channel', async () => {
      const prompts = [];
      const { reply, stdout } = await execute(kernel, "name = input('Who? ')\nprint('hello ' + name)", {
        onStdin: (msg, future) => {
          prompts.push(msg);
          future.sendInputReply({ status: 'ok', value: 'kernelgate' }, msg.header);
        },
      });
      assert.equal(prompts.length, 1, 'expected one input_request');
      assert.equal(prompts[0].header.msg_type, 'input_request');
      assert.equal(prompts[0].channel, 'stdin');
      assert.equal(prompts[0].content.prompt, 'Who? ');
      assert.equal(reply.content.status, 'ok');
      assert.equal(stdout, 'hello kernelgate\n');
    });

    if (buffers) step('a comm echoes binary buffers back intact', async () => {
      // Kernel side: a comm target that answers every message with the sizes and hashes of the buffers
      // it received and echoes the buffers themselves.
      const setup = await execute(
        kernel,
        [
          'import hashlib',
          'def _kg_echo_target(comm, open_msg):',
          '    @comm.on_msg',
          '    def _recv(msg):',
          "        bufs = [bytes(b) for b in msg['buffers']]",
          "        comm.send(data={'tag': msg['content']['data'].get('tag'),",
          "                        'sizes': [len(b) for b in bufs],",
          "                        'sha256': [hashlib.sha256(b).hexdigest() for b in bufs]},",
          '                  buffers=bufs)',
          "get_ipython().kernel.comm_manager.register_target('kg_echo', _kg_echo_target)",
        ].join('\n')
      );
      assert.equal(setup.reply.content.status, 'ok', JSON.stringify(setup.reply.content));

      const big = new Uint8Array(70_000).map((_, i) => (i * 7 + (i >> 8)) & 0xff); // > 64 KiB, every byte value
      const small = new Uint8Array([0, 255, 10, 13, 0x7b, 0x22]); // NUL, 0xff, newline, '{', '"'
      const sock = kernelSockets(sockets, kernel)[0];
      const binaryBefore = sock.frames.binary;

      const comm = kernel.createComm('kg_echo');
      const echoed = new Promise((resolve) => {
        comm.onMsg = (msg) => resolve(msg);
      });
      await withDeadline(comm.open({}).done, EXEC_TIMEOUT, 'comm_open to be processed');
      // One plain ArrayBuffer and one DataView (the library serializes a view's whole underlying
      // buffer, so the view spans all of it).
      comm.send({ tag: 'bin' }, {}, [big.buffer, new DataView(small.buffer)]);
      const msg = await withDeadline(echoed, EXEC_TIMEOUT, 'comm_msg echo from the kernel');

      assert.equal(msg.header.msg_type, 'comm_msg');
      assert.equal(msg.channel, 'iopub');
      assert.equal(msg.content.comm_id, comm.commId);
      const d = msg.content.data;
      assert.equal(d.tag, 'bin');
      // What the kernel received (client -> gateway -> kernel).
      assert.deepEqual(d.sizes, [big.length, small.length]);
      assert.deepEqual(d.sha256, [sha256(big), sha256(small)]);
      // What came back (kernel -> gateway -> client).
      assert.equal(msg.buffers?.length, 2, `echo carried ${msg.buffers?.length} buffers`);
      const got = msg.buffers.map((b) => (b instanceof ArrayBuffer ? new Uint8Array(b) : bytesOf(b)));
      assert.equal(got[0].length, big.length);
      assert.ok(Buffer.from(got[0]).equals(Buffer.from(big)), '70000-byte buffer changed on the way back');
      assert.ok(Buffer.from(got[1]).equals(Buffer.from(small)), `small buffer came back as ${Array.from(got[1])}`);

      if (protocol === '') {
        assert.ok(sock.frames.binary > binaryBefore, 'legacy mode: the echo did not arrive as a binary frame');
        assert.ok(sock.binaryMsgTypes.includes('comm_msg'), `legacy binary frames carried ${sock.binaryMsgTypes}`);
        assert.ok(sock.binaryMsgTypes.every((t) => t === 'comm_msg'), `unexpected legacy binary frames: ${sock.binaryMsgTypes}`);
      }
      comm.close();
    });

    step('the websocket used the negotiated framing throughout', async () => {
      const sock = kernelSockets(sockets, kernel)[0];
      if (protocol === V1) {
        assert.equal(sock.frames.text, 0, `v1: server sent ${sock.frames.text} text frames`);
        assert.ok(sock.frames.binary > 10, `v1: only ${sock.frames.binary} binary frames`);
      } else {
        assert.ok(sock.frames.text > 10, `legacy: only ${sock.frames.text} text frames`);
      }
    });

    if (multi) step('a second connection to the same kernel sees the iopub of the first', async () => {
      const other = kernelManager.connectTo({ model: kernel.model, handleComms: false });
      try {
        await withDeadline(other.info, 20_000, 'kernel_info on the second connection');
        assert.notEqual(other.clientId, kernel.clientId);
        const seen = [];
        other.iopubMessage.connect((_, msg) => seen.push(msg));
        const { reply, stdout } = await execute(kernel, "print('shared')");
        assert.equal(stdout, 'shared\n');
        const parent = reply.parent_header.msg_id;
        await waitUntil(
          () => seen.some((m) => m.header.msg_type === 'status' && m.content.execution_state === 'idle' && m.parent_header.msg_id === parent),
          { timeoutMs: 10_000, what: 'the idle status of the first connection\'s request on the second connection' }
        );
        const streams = seen.filter((m) => m.header.msg_type === 'stream' && m.parent_header.msg_id === parent);
        assert.deepEqual(streams.map((m) => m.content.text), ['shared\n']);
        // Count on the gateway: in front mode each client gets its own upstream websocket.
        await waitUntil(async () => (await gatewayKernel(kernel.id)).model?.connections >= 2, {
          timeoutMs: 10_000,
          what: 'the gateway to count two connections to the kernel',
        });
      } finally {
        other.dispose();
      }
      // Back to one connection before the next test: the gateway keeps its replay buffer for the
      // session whose socket closed last, so a late close here would race the reconnect test.
      await waitUntil(async () => (await gatewayKernel(kernel.id)).model?.connections === 1, {
        timeoutMs: 10_000,
        what: 'the gateway to count one connection again after the second client left',
      });
    });

    if (replay) step('output produced while the websocket is down is replayed on reconnect', async () => {
      const before = kernelSockets(sockets, kernel).length;
      const current = kernelSockets(sockets, kernel).at(-1);
      assert.equal((await gatewayKernel(kernel.id)).model?.connections, 1, 'precondition: only this client is connected');
      let dropped = false;
      // One write per line: print() writes the text and the newline separately, and ipykernel
      // may publish them as two messages; the second would race the socket being cut below.
      const run = execute(kernel, "import sys, time\nsys.stdout.write('before\\n'); sys.stdout.flush()\ntime.sleep(0.5)\nsys.stdout.write('after\\n'); sys.stdout.flush()", {
        timeoutMs: 15_000,
        onIOPub: (m) => {
          if (!dropped && m.header.msg_type === 'stream' && m.content.text.includes('before')) {
            dropped = true;
            // The library reconnects at once with the same session id; hold that reconnection's
            // upgrade request back for 2.5 s so that 'after', the reply and idle happen while no
            // socket is connected.
            wsControl.delayNextMs = 2500;
            current.ws.terminate();
          }
        },
      });
      const { reply, stdout, iopub } = await run.catch((e) => {
        const again = kernelSockets(sockets, kernel).slice(before);
        const state = again.map((x) => `opened ${x.openedAt ? x.openedAt - x.createdAt : 'never'} ms after creation, ` +
          `received ${x.frames.text} text + ${x.frames.binary} binary frames: ${x.received.join(', ')}`);
        throw new Error(`${e.message}; dropped=${dropped}; reconnect sockets: [${state.join('; ')}]; ` +
          `library connectionStatus=${kernel.connectionStatus} status=${kernel.status}`);
      });
      assert.ok(dropped, "never saw 'before'");
      assert.equal(reply.content.status, 'ok');
      assert.equal(stdout, 'before\nafter\n', 'output lost or duplicated across the reconnect');
      const mine = kernelSockets(sockets, kernel);
      assert.equal(mine.length, before + 1, 'the library did not reconnect exactly once');
      const again = mine.at(-1);
      assert.ok(again.openedAt, 'reconnected socket never opened');
      assert.equal(new URL(again.url).searchParams.get('session_id'), new URL(current.url).searchParams.get('session_id'));
      // 'after' was produced by the kernel before the new socket was open, so it was replayed.
      const after = iopub.find((m) => m.header.msg_type === 'stream' && m.content.text.includes('after'));
      assert.ok(Date.parse(after.header.date) < again.openedAt, `'after' at ${after.header.date} is not older than the reconnect at ${new Date(again.openedAt).toISOString()}`);
      await waitUntil(() => kernel.connectionStatus === 'connected', { timeoutMs: 10_000, what: 'connectionStatus connected' });
      const check = await execute(kernel, 'print(6*7)');
      assert.equal(check.stdout, '42\n');
    });

    step('interrupt stops a running sleep', async () => {
      const before = await execute(kernel, 'import os\nprint(os.getpid())');
      kernelPid = Number(before.stdout.trim());
      assert.ok(kernelPid > 0);

      let sleeping;
      const started = new Promise((resolve) => {
        sleeping = resolve;
      });
      const run = execute(kernel, "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\nprint('woke')", {
        timeoutMs: 30_000,
        onIOPub: (m) => {
          if (m.header.msg_type === 'stream' && m.content.text.includes('sleeping')) sleeping();
        },
      });
      await withDeadline(started, 15_000, "the cell to print 'sleeping'");
      const t0 = Date.now();
      await withDeadline(kernel.interrupt(), 10_000, 'POST interrupt');
      const { reply, iopub, stdout } = await run;
      assert.ok(Date.now() - t0 < 15_000, 'interrupt took too long');
      assert.equal(reply.content.status, 'error');
      assert.equal(reply.content.ename, 'KeyboardInterrupt');
      assert.ok(iopub.some((m) => m.header.msg_type === 'error' && m.content.ename === 'KeyboardInterrupt'));
      assert.equal(stdout, 'sleeping\n');
      const after = await execute(kernel, 'print(os.getpid(), 6*7)');
      assert.equal(after.stdout, `${kernelPid} 42\n`, 'kernel did not survive the interrupt');
    });

    step('restart clears kernel state and keeps the kernel id', async () => {
      const id = kernel.id;
      const set = await execute(kernel, 'kg_state = 123\nprint(kg_state)');
      assert.equal(set.stdout, '123\n');
      await withDeadline(kernel.restart(), 60_000, 'POST restart');
      assert.equal(kernel.id, id);
      await withDeadline(kernel.info, 20_000, 'kernel_info after restart');
      const check = await execute(kernel, "import os\nprint('kg_state' in globals(), os.getpid())");
      const [present, pid] = check.stdout.trim().split(' ');
      assert.equal(present, 'False', 'variable survived the restart');
      assert.notEqual(Number(pid), kernelPid, 'same kernel process after restart');
      assert.equal(check.reply.content.execution_count, 1, 'execution count not reset');
      const model = await KernelAPI.getKernelModel(id, serverSettings);
      assert.equal(model?.id, id);
      kernelPid = Number(pid);
    });

    step('shutdown removes the kernel and ends its process', async () => {
      const id = kernel.id;
      await withDeadline(kernel.shutdown(), 30_000, 'DELETE kernel');
      assert.equal(kernel.status, 'dead');
      const running = await KernelAPI.listRunning(serverSettings);
      assert.ok(!running.some((k) => k.id === id), 'kernel still listed after shutdown');
      assert.equal(await KernelAPI.getKernelModel(id, serverSettings), undefined, 'GET kernel did not 404');
      if (front) assert.equal((await gatewayKernel(id)).status, 404, 'kernel still on the gateway');
      await waitUntil(() => isZombie(kernelPid), {
        timeoutMs: 15_000,
        what: `kernel process ${kernelPid} to exit`,
      });
    });

    step('sessions: start by path, list, rename, reuse, shut down', async () => {
      sessionManager = new SessionManager({ kernelManager, serverSettings });
      await withDeadline(sessionManager.ready, 15_000, 'SessionManager.ready');
      const path = `clients/${mode}/x.ipynb`;
      const session = await withDeadline(
        sessionManager.startNew({ path, type: 'notebook', name: 'x.ipynb', kernel: { name: 'python3' } }),
        60_000,
        'SessionManager.startNew'
      );
      assert.match(session.id, UUID_RE);
      assert.equal(session.path, path);
      assert.equal(session.type, 'notebook');
      assert.equal(session.name, 'x.ipynb');
      assert.ok(session.kernel, 'session has no kernel');
      assert.equal(session.kernel.name, 'python3');
      const kernelId = session.kernel.id;

      const { stdout } = await execute(session.kernel, 'print(6*7)');
      assert.equal(stdout, '42\n');
      if (front) assert.equal((await gatewayKernel(kernelId)).status, 200, "session's kernel is not on the gateway");

      let list = await SessionAPI.listRunning(serverSettings);
      const listed = list.find((s) => s.id === session.id);
      assert.ok(listed, 'session missing from GET /api/sessions');
      assert.equal(listed.path, path);
      assert.equal(listed.kernel.id, kernelId);
      const found = await sessionManager.findByPath(path);
      assert.equal(found?.id, session.id);

      // POST with an existing path returns the existing session.
      const again = await SessionAPI.startSession({ path, type: 'notebook', name: 'x.ipynb', kernel: { name: 'python3' } }, serverSettings);
      assert.equal(again.id, session.id);
      assert.equal(again.kernel.id, kernelId);

      // Rename (PATCH).
      const newPath = `clients/${mode}/y.ipynb`;
      await withDeadline(session.setPath(newPath), 10_000, 'PATCH session path');
      const model = await SessionAPI.getSessionModel(session.id, serverSettings);
      assert.equal(model.path, newPath);
      assert.equal(model.kernel.id, kernelId);

      await withDeadline(session.shutdown(), 30_000, 'DELETE session');
      list = await SessionAPI.listRunning(serverSettings);
      assert.ok(!list.some((s) => s.id === session.id), 'session still listed after shutdown');
      assert.equal(await KernelAPI.getKernelModel(kernelId, serverSettings), undefined, "session's kernel survived its shutdown");
      if (front) assert.equal((await gatewayKernel(kernelId)).status, 404, "session's kernel still on the gateway");
    });

    step('the gateway stops on SIGTERM without leaving kernels behind', async () => {
      // One more kernel, left running on purpose: the gateway must shut it down when it stops.
      const k = await withDeadline(kernelManager.startNew({ name: 'python3' }), 60_000, 'startNew');
      const { stdout } = await execute(k, 'import os\nprint(os.getpid())');
      const pid = Number(stdout.trim());
      sessionManager.dispose();
      kernelManager.dispose();
      specManager.dispose();
      if (front) {
        const f = await front.proc.stop();
        assert.ok(f.graceful, 'the front did not exit within 15 s of SIGTERM');
        // The front shuts down its kernels on the gateway when it stops.
        assert.equal((await gatewayKernel(k.id)).status, 404, 'front left its kernel on the gateway');
      }
      const res = await gw.stop();
      assert.ok(res.graceful, 'gateway did not exit within 15 s of SIGTERM');
      assert.equal(res.code, 0, `gateway exit code ${res.code} signal ${res.signal}`);
      assert.deepEqual(res.leftovers, [], 'processes left running after the gateway exited');
      assert.ok(isZombie(pid), `kernel ${pid} still running`);
    });
  });
}

/** True when `pid` is gone or a zombie (exited, not yet reaped by its parent). */
function isZombie(pid) {
  try {
    return /\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}
