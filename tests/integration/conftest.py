# SPDX-License-Identifier: BSD-3-Clause
"""Fixtures for the kernelgate integration tests.

The gateway under test is chosen by the environment:
  KG_BIN=/path/to/kernelgate          -> `KG_BIN serve --ip 127.0.0.1 --port P --data-dir D --auth-token T`
  KG_REFERENCE=jupyter-server (and no KG_BIN)
                                      -> Debian's Jupyter Server 1.23, which serves the same API
  neither                             -> <repo>/build/kernelgate if it exists, else the run fails.

Every gateway runs on a free loopback port with a temporary data dir and a random token; it is
stopped with SIGTERM (then SIGKILL) at teardown, and its log is attached to failing tests.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import requests

from kg_client import (LEGACY, PROTOCOLS, V1, ChannelClient, Deadline, RestClient, expect,
                       poll_until)

SYSTEM_PYTHON = "/usr/bin/python3"
REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = float(os.environ.get("KG_READY_TIMEOUT", "30"))
STOP_TIMEOUT = 15.0
CLEANUP_DELETE_TIMEOUT = 15.0
MARKER_ENV = "KG_INTEGRATION_TEST_INSTANCE"


def gateway_kind() -> str:
    if os.environ.get("KG_BIN"):
        return "kernelgate"
    if os.environ.get("KG_REFERENCE", "") == "jupyter-server":
        return "jupyter-server"
    return "kernelgate"


def kernelgate_binary() -> str:
    path = os.environ.get("KG_BIN") or str(REPO_ROOT / "build" / "kernelgate")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        pytest.fail(f"gateway binary {path!r} does not exist or is not executable "
                    f"(set KG_BIN, or KG_REFERENCE=jupyter-server to test against Jupyter Server)",
                    pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_child_env(tmp: Path, marker: str) -> Dict[str, str]:
    """Environment for servers (and, through them, kernels) isolated from the user's dirs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHONPATH", "PYTHONHOME", "JUPYTER_", "KG_", "VIRTUAL_ENV"))}
    for sub in ("runtime", "config", "data", "ipython"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    env.update({
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "0",
        "PYTHONUNBUFFERED": "1",
        MARKER_ENV: marker,
    })
    # Debian's python must win over any pyenv shim for anything started by name.
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    return env


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------

def _descendants(pid: int) -> List[int]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _pids_with_marker(marker: str) -> List[int]:
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies (e.g. killed by a ctest timeout)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
        return stat[stat.rfind(")") + 2:].split()[0] != "Z"
    except OSError:
        return False


class ManagedProcess:
    """A server process with a log file, a readiness poll and SIGTERM/SIGKILL teardown."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str], cwd: Path, log_path: Path,
                 marker: str):
        self.name = name
        self.argv = argv
        self.marker = marker
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self.stopped_rc: Optional[int] = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_text()
        return text if len(text) <= chars else "...\n" + text[-chars:]

    def wait_ready(self, probe, timeout: float) -> None:
        deadline = Deadline(timeout, f"{self.name} to become ready")
        last = "no answer yet"
        while True:
            rc = self.proc.poll()
            if rc is not None:
                pytest.fail(f"{self.name} exited with code {rc} before it was ready.\n"
                            f"command: {' '.join(self.argv)}\nlog:\n{self.log_tail()}", pytrace=False)
            try:
                ok, last = probe()
                if ok:
                    return
            except requests.RequestException as e:
                last = repr(e)
            if deadline.expired():
                self.stop()
                pytest.fail(f"{self.name} not ready after {timeout:.0f}s (last probe: {last}).\n"
                            f"command: {' '.join(self.argv)}\nlog:\n{self.log_tail()}", pytrace=False)
            time.sleep(0.05)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM and wait; returns the exit code, or None if it had to be SIGKILLed."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def stop(self) -> Optional[int]:
        """Terminate, then kill whatever it left behind (kernels it started)."""
        leftovers = set(_descendants(self.pid))
        rc = self.terminate()
        self.stopped_rc = rc
        leftovers |= set(_pids_with_marker(self.marker))
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self._log.close()
        return rc


# --------------------------------------------------------------------------------------
# The gateway under test
# --------------------------------------------------------------------------------------

class Gateway(RestClient):
    """A running gateway: REST helpers, kernel bookkeeping and WebSocket channel factory."""

    def __init__(self, kind: str, tmp: Path, extra: Optional[List[str]] = None):
        self.kind = kind
        self.tmp = tmp
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.marker = uuid.uuid4().hex
        self.data_dir = tmp / "data-dir"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(f"http://127.0.0.1:{self.port}", self.token)
        env = clean_child_env(tmp, self.marker)
        if kind == "kernelgate":
            argv = [kernelgate_binary(), "serve", "--ip", "127.0.0.1", "--port", str(self.port),
                    "--data-dir", str(self.data_dir), "--auth-token", self.token, *(extra or [])]
        else:
            root = tmp / "root"
            root.mkdir(exist_ok=True)
            argv = [SYSTEM_PYTHON, "-m", "jupyter_server", "--allow-root", "--no-browser",
                    f"--ServerApp.token={self.token}", f"--ServerApp.port={self.port}",
                    "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
                    f"--ServerApp.root_dir={root}"]
        self.process = ManagedProcess(f"gateway ({kind})", argv, env, tmp, tmp / "gateway.log", self.marker)
        self.kernels: List[str] = []
        self.channels: List[ChannelClient] = []

    @property
    def is_reference(self) -> bool:
        return self.kind != "kernelgate"

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        def probe():
            r = self.get("/api", timeout=2)
            return r.status_code == 200, f"GET /api -> {r.status_code}"
        self.process.wait_ready(probe, timeout)

    def log_tail(self, chars: int = 6000) -> str:
        return self.process.log_tail(chars)

    def reference_deviation(self, why: str) -> None:
        """Skip a check the reference server is known not to implement the way the contract says."""
        if self.is_reference:
            pytest.skip(f"reference Jupyter Server deviates from the contract: {why}")

    # -- kernels -----------------------------------------------------------------------
    def start_kernel(self, name: Optional[str] = "python3", **extra) -> dict:
        body = dict(extra)
        if name is not None:
            body["name"] = name
        r = expect(self.post("/api/kernels", body), 201)
        model = r.json()
        self.kernels.append(model["id"])
        return model

    def kernel_model(self, kernel_id: str) -> dict:
        return expect(self.get(f"/api/kernels/{kernel_id}"), 200).json()

    def shutdown_kernel(self, kernel_id: str) -> None:
        r = self.delete(f"/api/kernels/{kernel_id}")
        assert r.status_code in (204, 404), f"DELETE kernel -> {r.status_code} {r.text[:300]}"

    def wait_execution_state(self, kernel_id: str, states, timeout: float = 20.0) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        seen = []

        def check():
            m = self.kernel_model(kernel_id)
            seen.append(m.get("execution_state"))
            return m if m.get("execution_state") in states else None
        return poll_until(check, timeout, f"kernel {kernel_id} execution_state in {sorted(states)}",
                          detail=lambda: f"states seen: {seen[-10:]}")

    # -- channels ----------------------------------------------------------------------
    def channel_url(self, kernel_id: str, session_id: Optional[str], token_in_query: bool = False) -> str:
        query = []
        if session_id:
            query.append(f"session_id={session_id}")
        if token_in_query:
            query.append(f"token={self.token}")
        return self.ws_url(f"/api/kernels/{kernel_id}/channels") + ("?" + "&".join(query) if query else "")

    def open_channel(self, kernel_id: str, protocol: str = LEGACY, session_id: Optional[str] = None,
                     handshake: bool = True, token_in_query: bool = False) -> ChannelClient:
        """Open /channels; with handshake, wait until a kernel_info round trip (reply + iopub idle) works."""
        session_id = session_id or uuid.uuid4().hex
        headers = [] if token_in_query else [f"Authorization: token {self.token}"]
        ch = ChannelClient(self.channel_url(kernel_id, session_id, token_in_query), headers, protocol,
                           session_id)
        self.channels.append(ch)
        if handshake:
            res = ch.kernel_info(timeout=45)
            assert res.reply is not None and res.reply.msg_type == "kernel_info_reply", res
        return ch

    def cleanup_test_resources(self) -> None:
        """Close the test's sockets and DELETE its kernels; a DELETE that hangs is a gateway bug."""
        for ch in self.channels:
            ch.close()
        self.channels.clear()
        problems = []
        kernels, self.kernels = self.kernels, []
        for kid in kernels:
            if self.process.proc.poll() is not None:
                break
            t0 = time.monotonic()
            try:
                r = self.delete(f"/api/kernels/{kid}", timeout=CLEANUP_DELETE_TIMEOUT)
                if r.status_code not in (204, 404):
                    problems.append(f"DELETE /api/kernels/{kid} -> {r.status_code} {r.text[:200]!r}")
            except requests.RequestException as e:
                problems.append(f"DELETE /api/kernels/{kid} got no answer after "
                                f"{time.monotonic() - t0:.0f}s ({type(e).__name__})")
        if problems:
            pytest.fail("cleanup after the test: " + "; ".join(problems), pytrace=False)

    def stop(self) -> Optional[int]:
        for ch in self.channels:
            ch.close()
        return self.process.stop()


def launch_gateway(tmp: Path, kind: Optional[str] = None,
                   extra: Optional[List[str]] = None) -> Gateway:
    """extra: more `kernelgate serve` options (kernelgate only)."""
    kind = kind or gateway_kind()
    g = Gateway(kind, tmp, extra)
    g.wait_ready()
    return g


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """One gateway per test module (kernels are cleaned up after each test)."""
    g = launch_gateway(tmp_path_factory.mktemp("gw"))
    yield g
    crashed = g.process.proc.poll()
    g.stop()
    if crashed is not None:
        pytest.fail(f"the gateway died during the tests with exit code {crashed}\nlog:\n{g.log_tail()}",
                    pytrace=False)


@pytest.fixture
def gateway_factory(tmp_path):
    """Start extra, private gateways inside one test; all are stopped at teardown."""
    started: List[Gateway] = []

    def make() -> Gateway:
        d = tmp_path / f"gw{len(started)}"
        d.mkdir()
        g = launch_gateway(d)
        started.append(g)
        return g
    yield make
    for g in started:
        g.stop()


@pytest.fixture(autouse=True)
def _cleanup_gateway_resources(request):
    yield
    if "gw" in request.fixturenames:
        g = request.getfixturevalue("gw")
        g.cleanup_test_resources()


@pytest.fixture
def kernel(gw):
    """A fresh python3 kernel on the module's gateway, shut down after the test."""
    return gw.start_kernel("python3")


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    """Run a test once with legacy frames and once with the v1 subprotocol."""
    return request.param


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            tail = getattr(value, "log_tail", None)
            if callable(tail):
                try:
                    rep.sections.append((f"log of {name} ({getattr(value, 'kind', '')})", tail()))
                except Exception:  # pragma: no cover - best effort
                    pass


def pytest_report_header(config):
    kind = gateway_kind()
    where = os.environ.get("KG_BIN") or (str(REPO_ROOT / "build" / "kernelgate") if kind == "kernelgate"
                                          else "python3 -m jupyter_server")
    return f"gateway under test: {kind} ({where})"
