// SPDX-License-Identifier: BSD-3-Clause
//
// Start and stop the gateway under test for the real-client tests.
//
// Which gateway:
//   KG_BIN=/path/to/kernelgate           -> `kernelgate serve ...` (what ctest sets)
//   KG_REFERENCE=jupyter-server          -> Debian's Jupyter Server 1.23, the reference
//                                           implementation of the same API (only when KG_BIN is unset)
//   neither                              -> <repo>/build/kernelgate if it exists, else a clear error
//
// Every gateway gets a free port on 127.0.0.1, a fresh temporary root (data dir, Jupyter runtime dir,
// log file) and a random token. Its output is captured to a log file and kept in memory so that a
// failing test can print it.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, createWriteStream, symlinkSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const PYTHON = '/usr/bin/python3';
const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, '..', '..', '..');
export const CLIENTS_DIR = path.resolve(HERE, '..');

/** Fail loudly (never skip) when `npm ci --prefix tests/clients` has not been run. */
export function requireNodeModules(names) {
  const missing = names.filter((n) => !existsSync(path.join(CLIENTS_DIR, 'node_modules', ...n.split('/'))));
  if (missing.length) {
    throw new Error(
      `tests/clients/node_modules is missing ${missing.join(', ')}: run \`npm ci --prefix tests/clients\` ` +
        `from the repository root before these tests`
    );
  }
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolve `promise`, or reject with `what` after `ms` milliseconds. */
export async function withDeadline(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Poll `check` (async, truthy = done) every `intervalMs` until it succeeds or the deadline passes. */
export async function waitUntil(check, { timeoutMs, intervalMs = 100, what }) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= end) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function randomToken() {
  return randomBytes(24).toString('hex');
}

/** Which gateway to run, from the environment. */
export function gatewayKind() {
  if (process.env.KG_BIN) {
    if (!existsSync(process.env.KG_BIN)) throw new Error(`KG_BIN=${process.env.KG_BIN} does not exist (build kernelgate first)`);
    return { kind: 'kernelgate', bin: process.env.KG_BIN };
  }
  const ref = process.env.KG_REFERENCE;
  if (ref === 'jupyter-server') return { kind: 'jupyter-server' };
  if (ref) throw new Error(`unknown KG_REFERENCE=${ref} (supported: jupyter-server)`);
  const built = path.join(REPO_ROOT, 'build', 'kernelgate');
  if (existsSync(built)) return { kind: 'kernelgate', bin: built };
  throw new Error('set KG_BIN=/path/to/kernelgate, or KG_REFERENCE=jupyter-server to test the reference server');
}

/** Pids of all live descendants of `pid` (from /proc). */
export function descendants(pid) {
  const children = new Map();
  for (const ent of readdirSync('/proc')) {
    if (!/^\d+$/.test(ent)) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${ent}/stat`, 'utf8');
    } catch {
      continue;
    }
    // pid (comm) state ppid ...; comm may contain spaces and parentheses.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ppid = Number(rest[1]);
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(Number(ent));
  }
  const out = [];
  const todo = [pid];
  while (todo.length) {
    for (const c of children.get(todo.pop()) ?? []) {
      out.push(c);
      todo.push(c);
    }
  }
  return out;
}

function isAlive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

function cmdline(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
  } catch {
    return '?';
  }
}

/**
 * A child process with captured output.
 * `name` labels log lines, `logFile` receives everything.
 */
export class ManagedProcess {
  constructor(name, cmd, args, { env, cwd, logFile }) {
    this.name = name;
    this.cmd = cmd;
    this.args = args;
    this.logFile = logFile;
    this.output = '';
    this.exit = null; // {code, signal}
    this.stopping = false; // set when the test itself sends SIGTERM
    const logStream = createWriteStream(logFile, { flags: 'a' });
    this.child = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.pid = this.child.pid;
    const onData = (buf) => {
      const s = buf.toString('utf8');
      logStream.write(s);
      this.output += s;
      if (this.output.length > 2_000_000) this.output = this.output.slice(-1_000_000);
    };
    this.child.stdout.on('data', onData);
    this.child.stderr.on('data', onData);
    this.exited = new Promise((resolve) => {
      this.child.on('error', (e) => {
        onData(Buffer.from(`\n[${name}: spawn error: ${e.message}]\n`));
        this.exit = { code: null, signal: null, error: e };
        resolve(this.exit);
      });
      this.child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        if (!this.stopping) {
          onData(Buffer.from(`\n[kg-clients: ${name} (pid ${this.pid}) exited on its own or was signalled by ` +
            `someone else: code ${code}, signal ${signal}; the tests had not stopped it]\n`));
        }
        // Let the pipes drain before declaring the log complete.
        setImmediate(() => logStream.end());
        resolve(this.exit);
      });
    });
  }

  /** The last `maxChars` characters of the captured output. */
  tail(maxChars = 20000) {
    return this.output.length > maxChars ? '…' + this.output.slice(-maxChars) : this.output;
  }

  /**
   * SIGTERM, wait up to `timeoutMs` for exit, else SIGKILL.
   * Returns {code, signal, graceful, leftovers: [{pid, cmd}]}: leftovers are descendants (kernels)
   * that were alive before the signal and still alive after the process exited; they are killed.
   */
  async stop(timeoutMs = 15000) {
    if (this.exit) return { ...this.exit, graceful: true, leftovers: [] };
    const before = descendants(this.pid);
    this.stopping = true;
    this.child.kill('SIGTERM');
    let graceful = true;
    try {
      await withDeadline(this.exited, timeoutMs, `${this.name} to exit after SIGTERM`);
    } catch {
      graceful = false;
      this.child.kill('SIGKILL');
      await withDeadline(this.exited, 5000, `${this.name} to exit after SIGKILL`).catch(() => {});
    }
    // Give children a moment to finish their own shutdown once the parent is gone.
    const leftovers = [];
    await waitUntil(() => before.every((p) => !isAlive(p)), { timeoutMs: 3000, what: 'children to exit' }).catch(() => {});
    for (const p of before) {
      if (isAlive(p)) {
        leftovers.push({ pid: p, cmd: cmdline(p) });
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    return { ...this.exit, graceful, leftovers };
  }
}

/**
 * Start the gateway under test. Resolves when `GET /api` with the token answers 200.
 * Returns an object with baseUrl, wsUrl, token, port, root, dataDir, kind, proc, log(), stop().
 */
export async function startGateway({ label = 'gateway', readyTimeoutMs = Number(process.env.KG_READY_TIMEOUT_MS || 30000) } = {}) {
  const sel = gatewayKind();
  const root = mkdtempSync(path.join(tmpdir(), `kg-clients-${label}-`));
  const dataDir = path.join(root, 'data');
  const runtimeDir = path.join(root, 'runtime');
  const workDir = path.join(root, 'work');
  for (const d of [dataDir, runtimeDir, workDir]) mkdirSync(d, { recursive: true });
  const token = randomToken();
  const logFile = path.join(root, 'gateway.log');

  let lastError;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort();
    let cmd;
    let args;
    if (sel.kind === 'kernelgate') {
      // Run the binary through a symlink with another name: on a shared development machine a
      // `pkill kernelgate` aimed at someone else's server would otherwise stop the gateway under test
      // in the middle of a test. The binary and its arguments are unchanged.
      cmd = path.join(root, 'kg-under-test');
      if (!existsSync(cmd)) symlinkSync(path.resolve(sel.bin), cmd);
      args = ['serve', '--ip', '127.0.0.1', '--port', String(port), '--data-dir', dataDir, '--auth-token', token];
    } else {
      cmd = PYTHON;
      args = [
        '-m', 'jupyter_server',
        `--ServerApp.token=${token}`, `--ServerApp.port=${port}`, '--ServerApp.port_retries=0',
        '--ServerApp.ip=127.0.0.1', '--no-browser', '--allow-root', `--ServerApp.root_dir=${workDir}`,
      ];
    }
    const env = {
      ...process.env,
      JUPYTER_RUNTIME_DIR: runtimeDir,
      JUPYTER_DATA_DIR: path.join(root, 'jupyter-data'),
      JUPYTER_CONFIG_DIR: path.join(root, 'jupyter-config'),
      IPYTHONDIR: path.join(root, 'ipython'),
      PYTHONDONTWRITEBYTECODE: '1',
      PYDEVD_DISABLE_FILE_VALIDATION: '1',
    };
    const proc = new ManagedProcess(label, cmd, args, { env, cwd: workDir, logFile });
    const baseUrl = `http://127.0.0.1:${port}`;
    const gw = {
      kind: sel.kind,
      label,
      port,
      token,
      root,
      dataDir,
      workDir,
      logFile,
      baseUrl,
      wsUrl: `ws://127.0.0.1:${port}`,
      proc,
      log: (n) => proc.tail(n),
      stopped: null,
      async stop() {
        if (!this.stopped) this.stopped = proc.stop();
        return this.stopped;
      },
      /** Remove the temp root (call after a clean run; failures keep it for inspection). */
      cleanup() {
        rmSync(root, { recursive: true, force: true });
      },
    };
    try {
      await waitUntil(
        async () => {
          if (proc.exit) {
            const e = new Error(`${label} exited during startup (code ${proc.exit.code}, signal ${proc.exit.signal})`);
            e.exitedEarly = true;
            throw e;
          }
          const r = await fetch(`${baseUrl}/api`, { headers: { Authorization: `token ${token}` } });
          await r.arrayBuffer();
          return r.status === 200;
        },
        { timeoutMs: readyTimeoutMs, intervalMs: 100, what: `${label} (${sel.kind}) to answer GET /api with 200 on port ${port}` }
      ).catch(async (e) => {
        if (proc.exit) e = new Error(`${label} exited during startup (code ${proc.exit.code}, signal ${proc.exit.signal})`);
        e.exitedEarly = Boolean(proc.exit);
        throw e;
      });
      return gw;
    } catch (e) {
      await proc.stop(5000);
      const real = sel.kind === 'kernelgate' ? ` (${cmd} -> ${path.resolve(sel.bin)})` : '';
      lastError = new Error(`${e.message}\ncommand: ${cmd} ${args.join(' ')}${real}\n--- ${label} log (${logFile}) ---\n${proc.tail()}`);
      // A port race shows up as an early exit; try another port. A hang is not retried.
      if (!e.exitedEarly || !/address already in use|EADDRINUSE|port .* in use/i.test(proc.output)) break;
    }
  }
  throw lastError;
}

/**
 * Run `fn`; when it throws, print the tails of the given processes' logs (to stderr, which the
 * node test runner shows) and rethrow.
 */
export async function dumpLogsOnFailure(procs, fn) {
  try {
    return await fn();
  } catch (e) {
    for (const p of procs) {
      if (!p) continue;
      const proc = p.proc ?? p;
      process.stderr.write(`\n--- ${proc.name} log (${proc.logFile}), last lines ---\n${proc.tail(12000)}\n--- end of ${proc.name} log ---\n`);
    }
    throw e;
  }
}

/**
 * Start a Jupyter front end whose kernels live on `gw` (`--gateway-url`), on a free port with its own
 * token and temp dirs under gw.root. kind: 'notebook' (classic Notebook 6.4, has the UI) or
 * 'jupyter-server' (Jupyter Server 1.23, REST/WebSocket only). Resolves when the front lists python3
 * from the gateway. Returns {kind, proc, port, token, baseUrl, wsUrl, nbDir, root}.
 */
export async function startGatewayFront(gw, { kind = 'notebook', timeoutMs = 40_000 } = {}) {
  const root = path.join(gw.root, `front-${kind}`);
  const nbDir = path.join(root, 'notebooks');
  for (const d of [nbDir, path.join(root, 'runtime'), path.join(root, 'config'), path.join(root, 'data')]) {
    mkdirSync(d, { recursive: true });
  }
  const port = await freePort();
  const token = randomToken();
  const logFile = path.join(root, `${kind}.log`);
  const gatewayArgs = [`--gateway-url=http://127.0.0.1:${gw.port}`, `--GatewayClient.auth_token=${gw.token}`];
  let args;
  if (kind === 'notebook') {
    args = [
      '-m', 'notebook', '--no-browser', '--allow-root', `--port=${port}`, '--port-retries=0', '--ip=127.0.0.1',
      `--NotebookApp.token=${token}`, ...gatewayArgs, `--notebook-dir=${nbDir}`,
    ];
  } else if (kind === 'jupyter-server') {
    args = [
      '-m', 'jupyter_server', '--no-browser', '--allow-root', `--ServerApp.port=${port}`, '--ServerApp.port_retries=0',
      '--ServerApp.ip=127.0.0.1', `--ServerApp.token=${token}`, ...gatewayArgs, `--ServerApp.root_dir=${nbDir}`,
    ];
  } else {
    throw new Error(`unknown front kind ${kind}`);
  }
  const env = {
    ...process.env,
    JUPYTER_RUNTIME_DIR: path.join(root, 'runtime'),
    JUPYTER_CONFIG_DIR: path.join(root, 'config'),
    JUPYTER_DATA_DIR: path.join(root, 'data'),
    PYTHONDONTWRITEBYTECODE: '1',
  };
  const proc = new ManagedProcess(`${kind}-front`, PYTHON, args, { env, cwd: nbDir, logFile });
  const baseUrl = `http://127.0.0.1:${port}`;
  try {
    await waitUntil(
      async () => {
        if (proc.exit) throw new Error(`${kind} front exited (code ${proc.exit.code}, signal ${proc.exit.signal})`);
        const r = await fetch(`${baseUrl}/api/kernelspecs`, { headers: { Authorization: `token ${token}` } });
        const body = await r.text();
        return r.status === 200 && JSON.parse(body).kernelspecs?.python3;
      },
      { timeoutMs, intervalMs: 200, what: `the ${kind} front on port ${port} to list python3 from the gateway` }
    );
  } catch (e) {
    await proc.stop(5000);
    throw new Error(`${e.message}\n--- ${kind} front log (${logFile}) ---\n${proc.tail()}`);
  }
  return { kind, proc, port, token, baseUrl, wsUrl: `ws://127.0.0.1:${port}`, nbDir, root };
}
