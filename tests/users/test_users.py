# SPDX-License-Identifier: BSD-3-Clause
"""Users, hashed tokens, revocation and per-user kernels (issue 3), against the real gateway.

Covers the token (T01-T10), admin (A01-A03) and HTTP-logging (H03, H04) rows of
SECURITY.md §2, two users with real ipykernel kernels, revocation from another process (the
admin CLI), revocation under load with a printed close-latency measurement, what is stored on
disk, and the kernel limits.

Most kernels are kg-echo-kernel (fast); the isolation and KERNEL_USERNAME tests use a real
python3 ipykernel. Run with -s to see the measurements (ctest does).

H rows: H03 (no token in logs, also on a 500 and in a URL path), H04 (generic 500 body), H05
(Origin allow list is an exact match), H06 (cookies are never credentials, in T01) and H12
(bounded token notes; user names in T10) are here. Not repeated: H07 smuggling, H08 header
limits, H09 body limit, H11 bad/deep JSON and H13 reflected input (tests/faults
test_hostile_http_gets_clear_errors), the static token in logs (tests/faults
test_tokens_never_reach_the_log). H01/H02 do not apply (no login, no redirects). H10
(slowloris) is not covered: it needs the 30 s header-read deadline to pass.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import secrets
import socket
import sqlite3
import stat
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from conftest import (ManagedProcess, _pids_with_marker, clean_child_env,  # noqa: E402
                      free_port, kernelgate_binary)
from kg_client import (LEGACY, V1, ChannelClient, Deadline, RestClient, expect,  # noqa: E402
                       poll_until)

ECHO = os.environ.get("KG_ECHO_KERNEL") or str(Path(kernelgate_binary()).parent / "kg-echo-kernel")
PYTHON = "/usr/bin/python3"
TOKEN_RE = re.compile(r"^kg_([a-z2-7]{26})_([A-Za-z0-9_-]{43})$")
CLOSE_REVOKED = 4001

# Every token text any test created (and the static admin tokens): the storage and log tests
# look for each of them, and for each secret part, in every byte the gateways wrote.
ALL_TOKENS: List[str] = []
ALL_GATEWAYS: List["UserGateway"] = []


def token_parts(token: str) -> Tuple[str, str]:
    m = TOKEN_RE.match(token)
    assert m, f"token {token[:12]}... does not look like kg_<26 base32>_<43 base64url>"
    return m.group(1), m.group(2)


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def close_info(ch: ChannelClient) -> Tuple[Optional[int], str]:
    data = ch.close_frame or b""
    if len(data) < 2:
        return None, ""
    return int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace")


def ws_refusal(url: str, headers: List[str], **opts) -> int:
    """Try a WebSocket upgrade that must be refused; return the HTTP status of the refusal.

    (websocket-client sends a same-origin Origin unless told otherwise: pass origin= or
    suppress_origin=True in opts, never an Origin header.)"""
    try:
        ws = websocket.create_connection(url, header=headers, timeout=10, **opts)
    except websocket.WebSocketBadStatusException as e:
        return e.status_code
    ws.close()
    raise AssertionError(f"WebSocket upgrade to {url} was accepted")


class User(RestClient):
    """A REST client holding one token (and what the gateway said about it)."""

    def __init__(self, gw: "UserGateway", token: str, name: str, token_id: str):
        super().__init__(gw.base_url, token, timeout=60)
        self.gw = gw
        self.name = name
        self.token_id = token_id

    def start(self, name: str = "echo", env: Optional[dict] = None) -> str:
        body = {"name": name}
        if env is not None:
            body["env"] = env
        return expect(self.post("/api/kernels", body), 201).json()["id"]

    def channel(self, kernel_id: str, protocol: str = LEGACY, query_token: bool = False,
                session_id: Optional[str] = None) -> ChannelClient:
        url = self.ws_url(f"/api/kernels/{kernel_id}/channels")
        sid = session_id or uuid.uuid4().hex
        url += f"?session_id={sid}" + (f"&token={self.token}" if query_token else "")
        headers = [] if query_token else [f"Authorization: token {self.token}"]
        return ChannelClient(url, headers, protocol, sid)

    def me(self) -> dict:
        return expect(self.get("/api/me"), 200).json()


class UserGateway(RestClient):
    """A gateway with its own data dir, kernelspecs `echo` (kg-echo-kernel) and `pyreal`
    (Debian's python3 ipykernel), a static admin token, and helpers for the admin CLI."""

    def __init__(self, tmp: Path, extra: List[str]):
        self.tmp = tmp
        self.static_token = "static-" + secrets.token_urlsafe(24)
        ALL_TOKENS.append(self.static_token)
        self.port = free_port()
        self.data_dir = tmp / "data"
        specs = tmp / "kernels"
        for name, argv in {
            "echo": [ECHO, "-f", "{connection_file}"],
            "pyreal": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        }.items():
            (specs / name).mkdir(parents=True, exist_ok=True)
            (specs / name / "kernel.json").write_text(json.dumps(
                {"argv": argv, "display_name": name,
                 "language": "python" if name == "pyreal" else "echo",
                 "interrupt_mode": "signal" if name == "pyreal" else "message"}))
        # A resource file, so that /kernelspecs/echo/logo-64x64.png is a route that exists.
        (specs / "echo" / "logo-64x64.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
        super().__init__(f"http://127.0.0.1:{self.port}", self.static_token)
        self.marker = uuid.uuid4().hex
        argv = [kernelgate_binary(), "serve", "--ip", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--auth-token", self.static_token,
                "--kernel-dir", str(specs), "--no-conda", "--launch-timeout", "30", *extra]
        self.env = clean_child_env(tmp, self.marker)
        self.cli_outputs: List[Tuple[List[str], str, str]] = []
        self.argv = argv
        ALL_GATEWAYS.append(self)
        self._launch()

    def _launch(self):
        self.process = ManagedProcess("kernelgate", self.argv, self.env, self.tmp,
                                      self.tmp / "gateway.log", self.marker)

        def probe():
            r = self.get("/api", timeout=2)
            return r.status_code == 200, f"GET /api -> {r.status_code}"
        self.process.wait_ready(probe, 30)

    def restart(self):
        """Stop (SIGTERM) and start again on the same port and data dir."""
        rc = self.process.stop()
        assert rc == 0, f"gateway exited with {rc} on SIGTERM"
        self._launch()

    def log_tail(self, chars: int = 8000) -> str:
        return self.process.log_tail(chars)

    def log_text(self) -> str:
        return self.process.log_text()

    # -- the admin CLI, as another process -----------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [kernelgate_binary(), *args, "--data-dir", str(self.data_dir)]
        p = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=30)
        self.cli_outputs.append((argv, p.stdout, p.stderr))
        if check:
            assert p.returncode == 0, f"{' '.join(args)} -> rc {p.returncode}: {p.stderr}"
        return p

    def cli_token(self, user: str, admin: bool = False, expires: Optional[str] = None,
                  note: Optional[str] = None) -> User:
        args = ["token", "create", "--user", user]
        if admin:
            args.append("--admin")
        if expires:
            args += ["--expires", expires]
        if note:
            args += ["--note", note]
        p = self.cli(*args)
        token = p.stdout.strip()
        ALL_TOKENS.append(token)
        tid, _ = token_parts(token)
        return User(self, token, user, tid)

    def rest_token(self, user: str, admin: bool = False, expires: Optional[str] = None) -> User:
        body = {"user": user, "admin": admin, "note": "rest"}
        if expires:
            body["expires"] = expires
        j = expect(self.post("/api/admin/tokens", body), 201).json()
        ALL_TOKENS.append(j["token"])
        tid, _ = token_parts(j["token"])
        assert j["id"] == tid and j["user"] == user and j["role"] == ("admin" if admin else "user")
        return User(self, j["token"], user, tid)

    def metric(self, name: str) -> int:
        text = expect(self.get("/metrics"), 200).text
        m = re.search(rf"^{re.escape(name)} (\d+)$", text, re.M)
        assert m, f"metric {name} missing"
        return int(m.group(1))

    def stop(self):
        crashed = self.process.proc.poll()
        self.process.stop()
        assert crashed is None, f"gateway died with {crashed}:\n{self.log_tail()}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    # A high failure limit: many tests here send bad tokens from 127.0.0.1 on purpose, and
    # throttling has its own gateway (test_t07).
    g = UserGateway(tmp_path_factory.mktemp("users"), ["--auth-fail-limit", "1000000"])
    yield g
    g.stop()


def _raw_http(port: int, request: bytes, timeout: float = 10) -> Tuple[int, Dict[str, str], bytes]:
    """One request on a fresh connection with exactly these bytes; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        deadline = Deadline(timeout, "raw HTTP response")
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            deadline.check()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines and lines[0].startswith("HTTP/1.1 "), f"no HTTP response: {data[:200]!r}"
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


def assert_refused_json(r: requests.Response, status: int = 403):
    assert r.status_code == status, f"{r.request.method} {r.request.url} -> {r.status_code} {r.text[:300]}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    j = r.json()
    assert set(j) >= {"reason", "message"}, j
    return j


# =====================================================================================
# T01: every route refuses a request without (valid) credentials; /api/health is open
# =====================================================================================

def test_t01_every_route_refuses_missing_or_wrong_credentials(gw):
    admin = gw
    victim = gw.cli_token("t01-victim")
    kernels_before = {k["id"] for k in expect(gw.get("/api/kernels"), 200).json()}
    kid = expect(admin.post("/api/kernels", {"name": "echo"}), 201).json()["id"]
    sess = expect(admin.post("/api/sessions", {"path": "t01.ipynb", "type": "notebook",
                                                "kernel": {"id": kid}}), 201).json()
    sid = sess["id"]
    routes = [
        ("GET", "/api", None), ("HEAD", "/api", None), ("GET", "/api/", None),
        ("GET", "/api/me", None),
        ("GET", "/api/kernels", None), ("POST", "/api/kernels", {"name": "echo"}),
        ("GET", f"/api/kernels/{kid}", None), ("DELETE", f"/api/kernels/{kid}", None),
        ("POST", f"/api/kernels/{kid}/interrupt", {}), ("POST", f"/api/kernels/{kid}/restart", {}),
        ("GET", f"/api/kernels/{kid}/channels", None),
        ("GET", f"/api/kernels/{uuid.uuid4()}", None),
        ("GET", "/api/kernelspecs", None), ("GET", "/api/kernelspecs/echo", None),
        ("GET", "/kernelspecs/echo/logo-64x64.png", None),
        ("GET", "/kernelspecs/echo/kernel.json", None),
        ("GET", "/api/sessions", None),
        ("POST", "/api/sessions", {"path": "x.ipynb", "type": "notebook", "kernel": {"name": "echo"}}),
        ("GET", f"/api/sessions/{sid}", None), ("PATCH", f"/api/sessions/{sid}", {"path": "y"}),
        ("DELETE", f"/api/sessions/{sid}", None),
        ("GET", "/api/admin/tokens", None),
        ("POST", "/api/admin/tokens", {"user": "t01-mallory", "admin": True}),
        ("DELETE", f"/api/admin/tokens/{victim.token_id}", None),
        ("GET", "/api/admin/users", None),
        ("POST", f"/api/admin/users/{victim.name}/disable", {}),
        ("POST", f"/api/admin/users/{victim.name}/enable", {}),
        ("GET", "/api/admin/audit", None),
        ("GET", "/metrics", None),
        ("GET", "/no/such/route", None),
        ("GET", "/", None),
    ]
    wrong = [
        {},  # no credentials at all
        {"Authorization": "token " + "kg_" + "a" * 26 + "_" + "A" * 43},   # well-formed, unknown
        {"Authorization": f"token {victim.token[:-1]}{'A' if victim.token[-1] != 'A' else 'B'}"},
        {"Authorization": "Bearer not-the-static-token"},
        {"Authorization": f"Basic {victim.token}"},   # a scheme we do not accept
        {"Cookie": f"token={gw.static_token}"},       # cookies are never credentials
    ]
    bodies = set()
    for method, path, body in routes:
        for headers in wrong:
            r = gw.request(method, path, auth=False, headers=headers,
                           **({"json": body} if body is not None else {}))
            assert r.status_code == 403, f"{method} {path} with {list(headers)} -> {r.status_code} {r.text[:200]}"
            if method != "HEAD":
                j = assert_refused_json(r)
                bodies.add(json.dumps(j, sort_keys=True))
    # One answer for every route: nothing tells a caller without a token what exists.
    assert len(bodies) == 1, bodies
    # ?token= with a wrong value is refused as well
    assert_refused_json(gw.get(f"/api/kernels?token={victim.token[:-2]}xx", auth=False))

    # The WebSocket upgrade, to a kernel that exists and to one that does not: refused
    # before 101, with the same status.
    for target in (kid, str(uuid.uuid4())):
        url = gw.ws_url(f"/api/kernels/{target}/channels")
        assert ws_refusal(url, []) == 403
        assert ws_refusal(url + "?token=nope", []) == 403
        assert ws_refusal(url, ["Authorization: token kg_" + "b" * 26 + "_" + "B" * 43]) == 403

    # The open allowlist: health, and CORS preflight which carries no data.
    h = gw.get("/api/health", auth=False)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    o = gw.request("OPTIONS", "/api/kernels", auth=False)
    assert o.status_code in (200, 204) and o.content == b"", (o.status_code, o.content[:200])

    # Nothing any of those requests attempted happened.
    assert expect(gw.get(f"/api/kernels/{kid}"), 200).json()["id"] == kid
    assert expect(gw.get(f"/api/sessions/{sid}"), 200).json()["path"] == "t01.ipynb"
    assert victim.me()["user"] == "t01-victim"
    users = {u["name"]: u for u in expect(gw.get("/api/admin/users"), 200).json()}
    assert "t01-mallory" not in users and users["t01-victim"]["disabled"] is False
    kernels = {k["id"] for k in expect(gw.get("/api/kernels"), 200).json()}
    assert kernels == kernels_before | {kid}, f"an unauthenticated POST started a kernel: {kernels}"
    expect(gw.delete(f"/api/sessions/{sid}"), 204)


# =====================================================================================
# T02: ?token= works (REST and WebSocket) and never reaches the log
# =====================================================================================

def test_t02_query_token_accepted_and_never_logged(gw):
    u = gw.cli_token("t02-user")
    _, secret = token_parts(u.token)
    r = gw.get(f"/api/me?token={u.token}", auth=False)
    assert expect(r, 200).json()["user"] == "t02-user"
    kid = u.start()
    ch = u.channel(kid, query_token=True)
    assert ch.kernel_info(timeout=20).reply is not None
    ch.close()
    # A wrong query token next to the right one in the URL, and an error route with the token
    gw.get(f"/api/kernels/{uuid.uuid4()}?token={u.token}", auth=False)
    gw.get(f"/api/me?token={u.token[:-3]}zzz", auth=False)
    gw.get(f"/no/route?token={u.token}&x=1", auth=False)
    expect(u.delete(f"/api/kernels/{kid}"), 204)
    log = gw.log_text()
    assert "/api/me" in log, "the requests were not logged at all; the check would be vacuous"
    assert secret not in log and u.token not in log
    assert secret[:16] not in log


# =====================================================================================
# T03 (optional): timing sanity. Prints numbers, asserts nothing about time.
# =====================================================================================

def test_t03_timing_sanity_printed(gw):
    u = gw.cli_token("t03-user")
    tid, secret = token_parts(u.token)
    flip = lambda ch: "A" if ch != "A" else "B"  # noqa: E731
    variants = {
        "unknown id": "kg_" + "c" * 26 + "_" + secret,
        "right id, wrong first char": f"kg_{tid}_{flip(secret[0])}{secret[1:]}",
        "right id, wrong last char": f"kg_{tid}_{secret[:-1]}{flip(secret[-1])}",
        "static-style garbage": "x" * 69,
    }
    samples: Dict[str, List[float]] = {k: [] for k in variants}
    s = requests.Session()
    for _ in range(150):
        for name, tok in variants.items():
            t0 = time.perf_counter()
            r = s.get(gw.base_url + "/api/me", headers={"Authorization": f"token {tok}"}, timeout=10)
            samples[name].append(time.perf_counter() - t0)
            assert r.status_code == 403
    print("\n[T03] /api/me with a bad token, median / p90 over 150 requests each:")
    for name, xs in samples.items():
        xs.sort()
        print(f"[T03]   {name:28s} {statistics.median(xs) * 1e6:8.0f} us  "
              f"{xs[int(len(xs) * 0.9)] * 1e6:8.0f} us")


# =====================================================================================
# T04: malformed tokens are refused quickly and do no harm
# =====================================================================================

def test_t04_malformed_tokens_refused_fast_gateway_alive(gw):
    u = gw.cli_token("t04-user")
    other = gw.cli_token("t04-other")
    tid, secret = token_parts(u.token)
    _, other_secret = token_parts(other.token)

    def raw(auth_line: bytes, target: bytes = b"/api/me") -> Tuple[int, bytes, float]:
        req = (b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth_line +
               b"Connection: close\r\n\r\n")
        t0 = time.perf_counter()
        status, _, body = _raw_http(gw.port, req)
        return status, body, time.perf_counter() - t0

    cases = {
        "empty token": b"Authorization: token \r\n",
        "no value": b"Authorization: token\r\n",
        "bearer no value": b"Authorization: Bearer\r\n",
        "scheme only with spaces": b"Authorization:    \r\n",
        "one char": b"Authorization: token x\r\n",
        "kg_ prefix only": b"Authorization: token kg_\r\n",
        "two spaces, valid token": b"Authorization: Bearer  " + u.token.encode() + b"\r\n",
        "tab instead of space": b"Authorization: token\t" + u.token.encode() + b"\r\n",
        "mixed-case scheme, bad token": b"Authorization: BeArEr kg_" + tid.encode() + b"_" + b"A" * 43 + b"\r\n",
        "unknown scheme": b"Authorization: Tokenx " + u.token.encode() + b"\r\n",
        "non-ASCII": "Authorization: token kg_é".encode("utf-8") + b"\xff\xfe" + b"\r\n",
        "non-ASCII inside a well-formed length": b"Authorization: token kg_" + tid.encode() + b"_" + secret[:-2].encode() + "é".encode() + b"\r\n",
        "id of one token, secret of another": f"Authorization: token kg_{tid}_{other_secret}\r\n".encode(),
        "valid token plus one char": f"Authorization: token {u.token}A\r\n".encode(),
        "valid token minus one char": f"Authorization: token {u.token[:-1]}\r\n".encode(),
        "upper-cased id": f"Authorization: token kg_{tid.upper()}_{secret}\r\n".encode(),
        "2 KiB": b"Authorization: token " + b"k" * 2048 + b"\r\n",
        "8 KiB": b"Authorization: token kg_" + b"a" * 8192 + b"\r\n",
        "two Authorization headers, first bad": b"Authorization: token bad\r\nAuthorization: token " + u.token.encode() + b"\r\n",
    }
    timings = []
    for name, line in cases.items():
        status, body, dt = raw(line)
        timings.append((dt, name))
        assert status == 403, f"{name}: {status} {body[:200]!r}"
        assert json.loads(body)["message"], name
        assert secret.encode() not in body and b"kg_" not in body, f"{name}: body echoes the token"
    # A NUL byte: refused as a malformed request (400) or as a bad token (403), never accepted.
    status, body, dt = raw(b"Authorization: token " + u.token.encode()[:40] + b"\0" + u.token.encode()[41:] + b"\r\n")
    timings.append((dt, "NUL in header"))
    assert status in (400, 403), f"NUL in header: {status} {body[:200]!r}"
    status, body, dt = raw(b"", b"/api/me?token=" + u.token.encode()[:40] + b"%00" + u.token.encode()[41:])
    timings.append((dt, "NUL in query"))
    assert status == 403, f"NUL in query: {status}"
    status, body, dt = raw(b"", b"/api/me?token=")
    assert status == 403, f"empty query token: {status}"
    # 64 KiB: beyond the header limit, so 431 (or 403); in any case refused, never a 5xx.
    for name, line, target in (("64 KiB header", b"Authorization: token kg_" + b"a" * 65536 + b"\r\n", b"/api/me"),
                               ("64 KiB query", b"", b"/api/me?token=" + b"a" * 65536)):
        status, body, dt = raw(line, target)
        timings.append((dt, name))
        assert status in (403, 431), f"{name}: {status} {body[:200]!r}"
    worst = max(timings)
    print(f"\n[T04] slowest refusal: {worst[0] * 1e3:.2f} ms ({worst[1]}); median "
          f"{statistics.median(t for t, _ in timings) * 1e3:.2f} ms over {len(timings)} cases")
    assert worst[0] < 1.0, f"a malformed token took {worst[0]:.2f}s to refuse ({worst[1]})"

    # The auth scheme is case-insensitive (RFC 9110 §11.1), so a valid token works with any case
    for scheme in ("token", "Token", "TOKEN", "bearer", "Bearer", "bEaReR"):
        r = gw.get("/api/me", auth=False, headers={"Authorization": f"{scheme} {u.token}"})
        assert expect(r, 200).json()["user"] == "t04-user", scheme
    # Still alive and still serving the real token.
    assert gw.get("/api/health", auth=False).status_code == 200
    assert u.me()["token_id"] == tid
    assert gw.process.proc.poll() is None


# =====================================================================================
# T05: expiry — policy, REST refusal, and open WebSockets closed at expiry with 4001
# =====================================================================================

def test_t05_expiry_bounds_are_enforced(gw):
    # The CLI: 0 and negative refused, 1s (the minimum) accepted, beyond the 90d maximum refused
    for bad in ("0s", "-5s", "0", "2x", "91d", "9999999999d", "1.5h", "1 d"):
        p = gw.cli("token", "create", "--user", "t05-bounds", "--expires", bad, check=False)
        assert p.returncode != 0 and p.stdout.strip() == "", f"--expires {bad!r} accepted: {p.stdout!r}"
    one = gw.cli_token("t05-bounds", expires="1s")
    info = [t for t in json.loads(gw.cli("token", "list", "--json", "--all").stdout) if t["id"] == one.token_id]
    ttl = parse_iso(info[0]["expires_at"]) - parse_iso(info[0]["created_at"])
    assert 0.9 <= ttl <= 1.1, ttl
    # REST: same rules
    for bad in ("0s", "-1s", "abc", "91d", "2160h1s", 5):
        r = gw.post("/api/admin/tokens", {"user": "t05-bounds", "expires": bad})
        assert r.status_code == 400, f"expires {bad!r} -> {r.status_code} {r.text[:200]}"
        assert_refused_json(r, 400)
    ALL_TOKENS.append(expect(gw.post("/api/admin/tokens", {"user": "t05-bounds", "expires": "90d"}),
                             201).json()["token"])
    # A value whose product with the unit overflows 64 bits must be refused too, not
    # silently turned into some other expiry.
    for huge in ("213503982334601d", "106751991167301d", "9223372036854775807s"):
        r = gw.post("/api/admin/tokens", {"user": "t05-bounds", "expires": huge})
        if r.status_code == 201:
            ALL_TOKENS.append(r.json()["token"])
        assert r.status_code == 400, (f"expires {huge!r} beyond the 90-day maximum was accepted: "
                                      f"{r.status_code}, expires_at {r.json().get('expires_at')}")


def test_t05_expired_token_refused_and_open_websockets_closed_with_4001(gw):
    owner = gw.cli_token("t05-user")
    kid = owner.start()
    # 5 s: enough for both tokens to be made, checked and used on a slow (ASan) build before
    # they expire.
    short_rest = gw.rest_token("t05-user", expires="5s")
    short_cli = gw.cli_token("t05-user", expires="5s")
    expiries = {}
    for u in (short_rest, short_cli):
        me = u.me()
        assert me["user"] == "t05-user" and me["token_id"] == u.token_id
        expiries[u.token_id] = parse_iso(me["expires_at"])
    chans = {short_rest.token_id: short_rest.channel(kid),
             short_cli.token_id: short_cli.channel(kid, V1)}
    keeper = owner.channel(kid)
    for ch in chans.values():
        assert ch.kernel_info(timeout=10).reply is not None
    closes = watch_closes(list(chans.values()), timeout=11)
    for (tid, ch), (t_closed, code, reason) in zip(chans.items(), closes):
        assert t_closed is not None, f"WebSocket of token {tid} still open 6 s after its expiry"
        late = t_closed - expiries[tid]
        print(f"\n[T05] token {tid[:8]}: WebSocket closed {late * 1e3:+.0f} ms after expires_at")
        assert code == CLOSE_REVOKED and reason, (code, reason)
        assert late > -0.1, f"closed {-late:.2f}s BEFORE the token expired"
        assert late < 2.0, f"closed {late:.2f}s after expiry (want about 1 s)"
    for u in (short_rest, short_cli):
        assert_refused_json(u.get("/api/me"))
        assert ws_refusal(u.ws_url(f"/api/kernels/{kid}/channels"),
                          [f"Authorization: token {u.token}"]) == 403
    # The owner's long-lived token and its socket are untouched
    assert keeper.kernel_info(timeout=10).reply is not None
    keeper.close()
    expect(owner.delete(f"/api/kernels/{kid}"), 204)


def watch_closes(chans: List[ChannelClient], timeout: float):
    """Wait, in parallel, for each channel to be closed by the server.

    Returns [(wall-clock time the close arrived or None, code, reason)] in order.
    """
    out: List[Tuple[Optional[float], Optional[int], str]] = [(None, None, "")] * len(chans)

    def one(i: int, ch: ChannelClient):
        if ch.wait_closed(timeout):
            t = time.time()
            code, reason = close_info(ch)
            out[i] = (t, code, reason)
    threads = [threading.Thread(target=one, args=(i, ch), daemon=True) for i, ch in enumerate(chans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return out


class CloseWatcher:
    """Start watching channels for a server close *before* the action that should close them."""

    def __init__(self, chans: List[ChannelClient], timeout: float):
        self.chans = chans
        self.result: List[Tuple[Optional[float], Optional[int], str]] = []
        self._t = threading.Thread(target=self._run, args=(timeout,), daemon=True)
        self._t.start()
        time.sleep(0.05)  # let every waiting thread reach its recv

    def _run(self, timeout):
        self.result = watch_closes(self.chans, timeout)

    def join(self):
        self._t.join()
        return self.result


# =====================================================================================
# T06 / A03: revocation through the admin REST API
# =====================================================================================

def test_t06_rest_revoke_refuses_rest_and_new_ws_and_closes_open_ws(gw):
    victim = gw.cli_token("t06-user")
    sibling = gw.cli_token("t06-user")   # same user, another token: must keep working
    kid = victim.start()
    chans = [victim.channel(kid), victim.channel(kid, V1), victim.channel(kid, query_token=True)]
    other = sibling.channel(kid)
    for ch in chans + [other]:
        assert ch.kernel_info(timeout=10).reply is not None
    watcher = CloseWatcher(chans, timeout=5)
    t0 = time.time()
    expect(gw.delete(f"/api/admin/tokens/{victim.token_id}"), 204)
    t_ret = time.time()
    # (a) REST refused at once
    assert_refused_json(victim.get("/api/me"))
    assert_refused_json(victim.get(f"/api/kernels/{kid}"))
    # (b) new WebSocket refused
    assert ws_refusal(victim.ws_url(f"/api/kernels/{kid}/channels"),
                      [f"Authorization: token {victim.token}"]) == 403
    # (c) open WebSockets closed with 4001 and a reason
    for ch, (t, code, reason) in zip(chans, watcher.join()):
        assert t is not None, "an open WebSocket of the revoked token was not closed"
        assert code == CLOSE_REVOKED and reason, (code, reason)
        print(f"\n[T06] REST revoke: close {1e3 * (t - t_ret):+.1f} ms after the DELETE returned "
              f"({1e3 * (t - t0):.1f} ms after it was sent)")
        assert t - t_ret < 2.0
    # The same user's other token, its socket and the kernel are untouched
    assert sibling.me()["user"] == "t06-user"
    assert other.kernel_info(timeout=10).reply is not None
    other.close()
    info = [t for t in expect(gw.get("/api/admin/tokens?user=t06-user"), 200).json()
            if t["id"] == victim.token_id][0]
    assert info["revoked_at"] and info["revoked_by"] == "admin"
    expect(sibling.delete(f"/api/kernels/{kid}"), 204)


def test_a03_revoke_racing_requests_nothing_succeeds_after_the_revoke_returns(gw):
    u = gw.cli_token("a03-race")
    kid = u.start()
    log: List[Tuple[float, float, int]] = []   # (sent, answered, status)
    stop = threading.Event()

    def hammer():
        s = requests.Session()
        while not stop.is_set():
            t0 = time.time()
            try:
                r = s.get(gw.base_url + f"/api/kernels/{kid}",
                          headers={"Authorization": f"token {u.token}"}, timeout=10)
                log.append((t0, time.time(), r.status_code))
            except requests.RequestException:
                log.append((t0, time.time(), -1))
    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    poll_until(lambda: len(log) > 40, 10, "requests flowing")
    expect(gw.delete(f"/api/admin/tokens/{u.token_id}"), 204)
    t_ret = time.time()
    poll_until(lambda: sum(1 for sent, _, _ in list(log) if sent > t_ret) > 20, 10,
               "requests after the revoke")
    stop.set()
    for t in threads:
        t.join(15)
    before = [st for sent, _, st in log if sent < t_ret]
    after = [st for sent, _, st in log if sent > t_ret]
    print(f"\n[A03 race] {len(before)} requests before the revoke returned "
          f"({before.count(200)} OK), {len(after)} after ({after.count(200)} OK)")
    assert before.count(200) > 20 and len(after) > 20
    assert all(st == 403 for st in after), sorted(set(after))
    assert expect(gw.get(f"/api/kernels/{kid}"), 200).json()["id"] == kid
    expect(gw.delete(f"/api/kernels/{kid}"), 204)


def test_a03_revoke_unknown_404_twice_204_no_prefix_match(gw):
    u = gw.cli_token("a03-user")
    assert_refused_json(gw.delete(f"/api/admin/tokens/{'q' * 26}"), 404)
    assert_refused_json(gw.delete("/api/admin/tokens/nonexistent"), 404)
    # Neither a prefix of the id nor the full token text revokes anything
    assert_refused_json(gw.delete(f"/api/admin/tokens/{u.token_id[:10]}"), 404)
    assert_refused_json(gw.delete(f"/api/admin/tokens/{u.token_id.upper()}"), 404)
    assert_refused_json(gw.delete(f"/api/admin/tokens/{u.token_id}x"), 404)
    assert u.me()["user"] == "a03-user"
    expect(gw.delete(f"/api/admin/tokens/{u.token_id}"), 204)
    expect(gw.delete(f"/api/admin/tokens/{u.token_id}"), 204)
    assert_refused_json(u.get("/api/me"))
    # CLI: unknown id fails, a second revoke says so and succeeds
    p = gw.cli("token", "revoke", "z" * 26, check=False)
    assert p.returncode != 0 and "no token" in p.stderr
    assert "already revoked" in gw.cli("token", "revoke", u.token_id).stdout
    # The audit log has the revocation, with who and from where, and no secret
    audit = expect(gw.get("/api/admin/audit"), 200).json()
    revokes = [e for e in audit if e["action"] == "token.revoke" and e["target"] == u.token_id]
    by_rest = [e for e in revokes if e["source"] == "127.0.0.1"]
    by_cli = [e for e in revokes if e["source"] == "cli"]
    assert by_rest and all(e["actor"].startswith("admin") for e in by_rest), revokes
    assert by_cli and all(e["actor"].startswith("cli:") for e in by_cli), revokes
    _, secret = token_parts(u.token)
    assert secret not in json.dumps(audit)


def test_h03_token_pasted_into_a_url_path_is_not_logged(gw):
    # An admin pastes a whole token where its id belongs, or a client puts one in a path:
    # the request fails, and the secret must not end up in the log through the logged path.
    u = gw.cli_token("h03-path")
    ALL_TOKENS.remove(u.token)   # checked here; the storage scan would otherwise flag it too
    _, secret = token_parts(u.token)
    assert gw.delete(f"/api/admin/tokens/{u.token}").status_code == 404
    assert gw.get(f"/api/kernels/{u.token}").status_code == 404
    assert gw.get(f"/api/kernels/{u.token}/channels", auth=False).status_code == 403
    assert u.me()["user"] == "h03-path"
    log = gw.log_text()
    assert "/api/admin/tokens/" in log, "the request was not logged at all; the check would be vacuous"
    lines = [ln for ln in log.splitlines() if secret in ln]
    assert not lines, f"{len(lines)} log lines contain the token's secret, e.g. {lines[0][:160]!r}"


# =====================================================================================
# T07: throttling failed authentication per source address
# =====================================================================================

def test_t07_failed_auth_throttled_429_retry_after_valid_token_still_works(tmp_path_factory):
    g = UserGateway(tmp_path_factory.mktemp("throttle"), ["--auth-fail-limit", "5"])
    try:
        u = g.cli_token("t07-user")
        kid = u.start()
        for i in range(5):
            assert_refused_json(g.get("/api/me", auth=False, headers={"Authorization": f"token bad{i}"}))
        r = g.get("/api/me", auth=False, headers={"Authorization": "token bad-again"})
        assert r.status_code == 429, (r.status_code, r.text)
        ra = r.headers.get("Retry-After")
        assert ra and ra.isdigit() and 1 <= int(ra) <= 61, ra
        assert r.json()["message"]
        # Without a token at all, with ?token=, and on the WebSocket upgrade: also 429
        assert g.get("/api/kernels", auth=False).status_code == 429
        assert g.get("/api/kernels?token=nope", auth=False).status_code == 429
        assert ws_refusal(g.ws_url(f"/api/kernels/{kid}/channels"), []) == 429
        # A valid token always works, REST and WebSocket; health stays open
        assert u.me()["user"] == "t07-user"
        assert expect(g.get("/api/me"), 200).json()["role"] == "admin"
        ch = u.channel(kid)
        assert ch.kernel_info(timeout=10).reply is not None
        ch.close()
        assert g.get("/api/health", auth=False).status_code == 200
        assert g.metric("kernelgate_auth_failures_total") >= 9
        # Throttled attempts are not each logged (the log cannot be flooded)
        assert g.log_text().count("authentication failed") <= 6
    finally:
        g.stop()


# =====================================================================================
# T08 / T09: another user's kernel is 404 everywhere; listings are filtered
# =====================================================================================

def assert_kernel_isolated(owner: User, intruder: User, kid: str, sid: str):
    """Every route on owner's kernel `kid` / session `sid` answers intruder like a missing one."""
    ghost_k, ghost_s = str(uuid.uuid4()), str(uuid.uuid4())

    def same_as_missing(method, path_fmt, body=None):
        real = intruder.request(method, path_fmt.format(k=kid, s=sid),
                                **({"json": body} if body is not None else {}))
        ghost = intruder.request(method, path_fmt.format(k=ghost_k, s=ghost_s),
                                 **({"json": body} if body is not None else {}))
        assert real.status_code == 404, f"{method} {path_fmt} -> {real.status_code} {real.text[:200]}"
        assert ghost.status_code == real.status_code
        # The body differs only by the id: no existence oracle
        assert real.text.replace(kid, "ID").replace(sid, "ID") == \
            ghost.text.replace(ghost_k, "ID").replace(ghost_s, "ID"), (real.text, ghost.text)
    for method, path, body in [
        ("GET", "/api/kernels/{k}", None), ("DELETE", "/api/kernels/{k}", None),
        ("POST", "/api/kernels/{k}/interrupt", {}), ("POST", "/api/kernels/{k}/restart", {}),
        ("GET", "/api/kernels/{k}/channels", None),
        ("GET", "/api/sessions/{s}", None), ("DELETE", "/api/sessions/{s}", None),
        ("PATCH", "/api/sessions/{s}", {"path": "stolen.ipynb"}),
        ("PATCH", "/api/sessions/{s}", {"kernel": {"name": "echo"}}),
    ]:
        same_as_missing(method, path, body)
    # A session pointing at the owner's kernel cannot be created, or redirected to it
    r = intruder.post("/api/sessions", {"path": "mine.ipynb", "type": "notebook", "kernel": {"id": kid}})
    assert r.status_code == 404, (r.status_code, r.text)
    # The WebSocket upgrade: refused before 101, same as a missing kernel, also with the
    # owner's session id (no takeover of the owner's replay buffer)
    url = intruder.ws_url(f"/api/kernels/{kid}/channels")
    hdr = [f"Authorization: token {intruder.token}"]
    assert ws_refusal(url, hdr) == 404
    assert ws_refusal(url + f"?session_id={sid}", hdr) == 404
    assert ws_refusal(url + f"?token={intruder.token}", []) == 404
    assert ws_refusal(intruder.ws_url(f"/api/kernels/{ghost_k}/channels"), hdr) == 404
    # Listings
    assert kid not in [k["id"] for k in expect(intruder.get("/api/kernels"), 200).json()]
    assert kid not in [k["id"] for k in expect(intruder.get("/api/kernels?all=1"), 200).json()]
    assert sid not in [s["id"] for s in expect(intruder.get("/api/sessions"), 200).json()]
    assert sid not in [s["id"] for s in expect(intruder.get("/api/sessions?all=1"), 200).json()]
    # ... and the owner still has both, untouched
    assert expect(owner.get(f"/api/kernels/{kid}"), 200).json()["id"] == kid
    s = expect(owner.get(f"/api/sessions/{sid}"), 200).json()
    assert s["kernel"]["id"] == kid and s["path"] != "stolen.ipynb"


def test_t08_t09_cross_user_404_and_filtered_listings_echo(gw):
    a = gw.cli_token("t08-a")
    b = gw.cli_token("t08-b")
    ka = a.start()
    sa = expect(a.post("/api/sessions", {"path": "t08/a.ipynb", "type": "notebook",
                                         "kernel": {"id": ka}}), 201).json()["id"]
    kb = b.start()
    ch = a.channel(ka)
    assert ch.kernel_info(timeout=10).reply is not None
    restarts0 = gw.metric("kernelgate_kernels_restarted_total")
    assert_kernel_isolated(a, b, ka, sa)
    # Nothing b did reached the kernel: no restart, the owner's socket still works
    assert gw.metric("kernelgate_kernels_restarted_total") == restarts0
    assert ch.run("still mine", timeout=10).stdout() == "still mine"
    # T09: each sees only their own kernel and session
    assert [k["id"] for k in expect(a.get("/api/kernels"), 200).json()] == [ka]
    assert [k["id"] for k in expect(b.get("/api/kernels"), 200).json()] == [kb]
    assert [s["id"] for s in expect(a.get("/api/sessions"), 200).json()] == [sa]
    assert expect(b.get("/api/sessions"), 200).json() == []
    # A session with the same path, created by b, is b's own and leaves a's alone
    sb = expect(b.post("/api/sessions", {"path": "t08/a.ipynb", "type": "notebook",
                                         "kernel": {"id": kb}}), 201).json()
    assert sb["id"] != sa and sb["kernel"]["id"] == kb
    assert [s["id"] for s in expect(a.get("/api/sessions"), 200).json()] == [sa]
    assert expect(a.get(f"/api/sessions/{sa}"), 200).json()["kernel"]["id"] == ka
    # The admin sees everything
    ids = [k["id"] for k in expect(gw.get("/api/kernels"), 200).json()]
    assert ka in ids and kb in ids
    sids = [s["id"] for s in expect(gw.get("/api/sessions"), 200).json()]
    assert sa in sids and sb["id"] in sids
    users = {u["name"]: u for u in expect(gw.get("/api/admin/users"), 200).json()}
    assert users["t08-a"]["kernels"] == 1 and users["t08-b"]["kernels"] == 1
    ch.close()
    expect(a.delete(f"/api/kernels/{ka}"), 204)
    expect(b.delete(f"/api/kernels/{kb}"), 204)


def test_t09_session_path_lookup_is_per_user(gw):
    """Two users each hold a session at the same path. POSTing that path again returns the
    caller's own session (Jupyter semantics); it must never be decided by the other user's
    session. One of the two sessions sorts first, so checking both users catches a lookup
    that is not per user, whatever the random ids."""
    a = gw.cli_token("t09-a")
    b = gw.cli_token("t09-b")
    ka, kb = a.start(), b.start()
    sa = expect(a.post("/api/sessions", {"path": "t09/same.ipynb", "type": "notebook",
                                         "kernel": {"id": ka}}), 201).json()["id"]
    sb = expect(b.post("/api/sessions", {"path": "t09/same.ipynb", "type": "notebook",
                                         "kernel": {"id": kb}}), 201).json()["id"]
    assert sb != sa
    problems = []
    for who, own_sid, own_kid in ((a, sa, ka), (b, sb, kb)):
        again = expect(who.post("/api/sessions", {"path": "t09/same.ipynb", "type": "notebook",
                                                  "kernel": {"name": "echo"}}), 201).json()
        if again["id"] != own_sid:
            who.delete(f"/api/sessions/{again['id']}")
            problems.append(f"{who.name} re-POSTing its own session's path got a new session and "
                            f"a new kernel instead of its session {own_sid[:8]}")
        else:
            assert again["kernel"]["id"] == own_kid
    mine = [s["id"] for s in expect(a.get("/api/sessions"), 200).json()]
    assert mine == [sa], mine
    expect(a.delete(f"/api/kernels/{ka}"), 204)
    expect(b.delete(f"/api/kernels/{kb}"), 204)
    assert not problems, "; ".join(problems) + f" (session ids: a {sa}, b {sb})"


# =====================================================================================
# T10: user names are exact, and confusable / malformed ones are refused
# =====================================================================================

def test_t10_user_names_exact_and_confusables_rejected(gw):
    lower = gw.cli_token("alice")
    upper = gw.cli_token("Alice")
    assert lower.me()["user"] == "alice" and upper.me()["user"] == "Alice"
    k = lower.start()
    assert upper.get(f"/api/kernels/{k}").status_code == 404
    assert expect(upper.get("/api/kernels"), 200).json() == []
    names = {u["name"] for u in expect(gw.get("/api/admin/users"), 200).json()}
    assert {"alice", "Alice"} <= names
    # Disabling one does not touch the other
    gw.cli("user", "disable", "Alice")
    assert_refused_json(upper.get("/api/me"))
    assert lower.me()["user"] == "alice"
    gw.cli("user", "enable", "Alice")
    assert upper.me()["user"] == "Alice"
    for bad in ("\u0430lice",      # Cyrillic а
                "alice ", " alice", "al ice", "", "a" * 65, "a/b", "../x", "al\u200bice",
                "alice\n", "ali\u0441e", "alİce"):
        p = gw.cli("token", "create", "--user", bad, check=False)
        assert p.returncode != 0 and p.stdout.strip() == "", f"user {bad!r} accepted"
        r = gw.post("/api/admin/tokens", {"user": bad})
        assert r.status_code == 400, f"REST user {bad!r} -> {r.status_code}"
    names_after = {u["name"] for u in expect(gw.get("/api/admin/users"), 200).json()}
    assert names_after == names, names_after ^ names
    expect(lower.delete(f"/api/kernels/{k}"), 204)


# =====================================================================================
# A01 / A02: admin routes are admin-only; a user cannot mint tokens
# =====================================================================================

def test_a01_a02_non_admin_refused_on_admin_routes_and_cannot_mint(gw):
    u = gw.cli_token("a01-user")
    target = gw.cli_token("a01-target")
    before = expect(gw.get("/api/admin/tokens"), 200).json()
    for method, path, body in [
        ("GET", "/api/admin/tokens", None), ("GET", "/api/admin/tokens?user=a01-user", None),
        ("POST", "/api/admin/tokens", {"user": "a01-user", "admin": True}),
        ("POST", "/api/admin/tokens", {"user": "a01-user"}),
        ("POST", "/api/admin/tokens", {"user": "admin", "admin": True, "expires": "1h"}),
        ("DELETE", f"/api/admin/tokens/{target.token_id}", None),
        ("DELETE", f"/api/admin/tokens/{u.token_id}", None),
        ("DELETE", "/api/admin/tokens/static", None),
        ("GET", "/api/admin/users", None),
        ("POST", "/api/admin/users/a01-target/disable", {"shutdown_kernels": True}),
        ("POST", "/api/admin/users/admin/disable", {}),
        ("POST", "/api/admin/users/a01-user/enable", {}),
        ("GET", "/api/admin/audit", None),
        ("GET", "/api/admin/nonexistent", None),
        ("GET", "/metrics", None),
    ]:
        r = u.request(method, path, **({"json": body} if body is not None else {}))
        j = assert_refused_json(r, 403)
        assert j["message"] == "admin role required", (method, path, j)
        assert "token" not in j or not str(j.get("token", "")).startswith("kg_")
    after = expect(gw.get("/api/admin/tokens"), 200).json()
    assert len(after) == len(before), "a user created or removed a token"
    assert all(t["revoked_at"] is None for t in after if t["id"] in (target.token_id, u.token_id))
    assert target.me()["user"] == "a01-target" and u.me()["role"] == "user"
    assert expect(gw.get("/api/me"), 200).json()["role"] == "admin"
    # An admin made via the API is an admin, and its tokens can mint
    adm = gw.rest_token("a01-admin2", admin=True, expires="1h")
    assert adm.me()["role"] == "admin"
    made = expect(adm.post("/api/admin/tokens", {"user": "a01-made", "expires": "1h"}), 201).json()
    ALL_TOKENS.append(made["token"])
    assert made["role"] == "user"


def test_api_me_reports_identity(gw):
    u = gw.cli_token("me-user", expires="1h", note="hello")
    me = u.me()
    assert me == {"user": "me-user", "token_id": u.token_id, "role": "user",
                  "expires_at": me["expires_at"]}
    assert 3500 < parse_iso(me["expires_at"]) - time.time() < 3700
    a = expect(gw.get("/api/me"), 200).json()
    assert a["user"] == "admin" and a["role"] == "admin" and a["token_id"] == "static"
    listed = [t for t in json.loads(gw.cli("token", "list", "--json", "--user", "me-user").stdout)]
    assert [t["id"] for t in listed] == [u.token_id] and listed[0]["note"] == "hello"
    assert listed[0]["last_used_at"], "last-used time not recorded"
    fresh = gw.cli_token("me-user2")
    rest_list = expect(gw.get("/api/admin/tokens?user=me-user2"), 200).json()
    assert [t["id"] for t in rest_list] == [fresh.token_id] and rest_list[0]["last_used_at"] is None
    fresh.me()
    assert expect(gw.get("/api/admin/tokens?user=me-user2"), 200).json()[0]["last_used_at"]
    # H12: notes are bounded, and odd characters in them never reach the log raw
    assert gw.post("/api/admin/tokens", {"user": "me-user2", "note": "n" * 257}).status_code == 400
    assert gw.cli("token", "create", "--user", "me-user2", "--note", "n" * 257, check=False).returncode != 0
    odd = "line1\r\n[2099-01-01 00:00:00.000] [critical] forged\x1b[31m"
    made = expect(gw.post("/api/admin/tokens", {"user": "me-user2", "note": odd, "expires": "1h"}), 201).json()
    ALL_TOKENS.append(made["token"])
    assert made["note"] == odd
    log = gw.log_text()
    assert "[critical] forged" not in log and "\x1b[31m" not in log
    assert "token" not in listed[0] and all(not str(v).startswith("kg_") for v in listed[0].values())


def test_pepper_rotation_while_running_and_after_restart(tmp_path_factory):
    """`kernelgate pepper rotate` is an admin CLI command like the others: run while the
    gateway serves, nothing that worked may stop working, and a token the CLI creates right
    after must work (the CLI signs it with the new version). After a restart every token
    still works, and a used token is re-hashed under the newest version."""
    g = UserGateway(tmp_path_factory.mktemp("pepper"), [])
    try:
        before_cli = g.cli_token("pep-a")
        before_rest = g.rest_token("pep-b")
        kid = before_cli.start()
        ch = before_cli.channel(kid)
        assert ch.kernel_info(timeout=10).reply is not None
        out = g.cli("pepper", "rotate").stdout
        assert "version 2" in out, out
        assert stat.S_IMODE(os.stat(g.data_dir / "pepper").st_mode) == 0o600
        assert len(re.findall(r"^v\d+ [0-9a-f]{64}$", (g.data_dir / "pepper").read_text(), re.M)) == 2
        # Nothing that worked stops working
        assert before_cli.me()["user"] == "pep-a" and before_rest.me()["user"] == "pep-b"
        assert ch.kernel_info(timeout=10).reply is not None
        ch.close()
        after_rest = g.rest_token("pep-c")
        assert after_rest.me()["user"] == "pep-c"
        after_cli = g.cli_token("pep-d")
        problems = []
        r = after_cli.get("/api/me")
        if r.status_code != 200:
            problems.append(f"a token made by `token create` after `pepper rotate` is refused by "
                            f"the running gateway ({r.status_code}) until it restarts")
        # After a restart: every token works, and use moves each to the newest version
        g.restart()
        tokens = [before_cli, before_rest, after_rest, after_cli]
        for u in tokens:
            r = u.get("/api/me")
            assert r.status_code == 200, f"{u.name}'s token refused after restart: {r.status_code}"
        db = sqlite3.connect(f"file:{g.data_dir / 'auth.db'}?mode=ro", uri=True)
        try:
            versions = dict(db.execute("SELECT id, pepper_version FROM tokens").fetchall())
        finally:
            db.close()
        assert all(versions[u.token_id] == 2 for u in tokens), versions
        assert not problems, "; ".join(problems)
    finally:
        g.stop()


# =====================================================================================
# Two users with real ipykernel kernels: isolation, admin override, KERNEL_USERNAME
# =====================================================================================

def test_two_users_real_kernels_isolation_admin_override_and_identity(gw):
    alice = gw.cli_token("rk-alice")
    bob = gw.rest_token("rk-bob")
    ka = alice.start("pyreal", env={"KERNEL_USERNAME": "root", "KERNEL_X": "1"})
    kb = bob.start("pyreal")     # no env at all
    sa = expect(alice.post("/api/sessions", {"path": "rk/alice.ipynb", "type": "notebook",
                                             "kernel": {"id": ka}}), 201).json()["id"]
    sb = expect(bob.post("/api/sessions", {"path": "rk/bob.ipynb", "type": "notebook",
                                           "kernel": {"name": "pyreal"},
                                           "env": {"KERNEL_USERNAME": "rk-alice"}}), 201).json()
    kb2 = sb["kernel"]["id"]
    cha = alice.channel(ka, V1)
    chb = bob.channel(kb)
    chb2 = bob.channel(kb2)
    code = "import os; print(os.environ['KERNEL_USERNAME'])"
    cha.nudge(timeout=45)
    chb.nudge(timeout=45)
    chb2.nudge(timeout=45)
    # KERNEL_USERNAME comes from the token, whatever the client sent
    assert cha.run(code, timeout=30).stdout().strip() == "rk-alice"
    assert chb.run(code, timeout=30).stdout().strip() == "rk-bob"
    assert chb2.run(code, timeout=30).stdout().strip() == "rk-bob"
    assert cha.run("print(os.environ.get('KERNEL_X'))", timeout=30).stdout().strip() == "1"
    assert cha.run("secret_value = 42", timeout=30).status == "ok"

    # bob on every route of alice's kernel and session: 404, like a missing kernel
    assert_kernel_isolated(alice, bob, ka, sa)
    # ... and alice on bob's
    assert_kernel_isolated(bob, alice, kb2, sb["id"])
    # bob's interrupt does not reach alice's running cell
    req = cha.execute("import time; time.sleep(1.5); print('done')")
    time.sleep(0.3)
    assert bob.post(f"/api/kernels/{ka}/interrupt", {}).status_code == 404
    res = cha.collect_execution(req, timeout=30)
    assert res.status == "ok" and res.stdout().strip() == "done", res
    # alice's state survived bob's DELETE and restart attempts
    assert cha.run("print(secret_value)", timeout=30).stdout().strip() == "42"
    # bob's socket never saw anything of alice's kernel
    leaked = [m for m in chb.history + chb2.history
              if "secret_value" in json.dumps(m.content) or m.parent_header.get("session") == cha.session_id]
    assert not leaked, leaked[:3]

    # Admin override: sees both, acts on both
    ids = {k["id"] for k in expect(gw.get("/api/kernels"), 200).json()}
    assert {ka, kb, kb2} <= ids
    sids = {s["id"] for s in expect(gw.get("/api/sessions"), 200).json()}
    assert {sa, sb["id"]} <= sids
    assert expect(gw.get(f"/api/kernels/{kb}"), 200).json()["id"] == kb
    req = cha.execute("import time; time.sleep(30)")
    poll_until(lambda: alice.get(f"/api/kernels/{ka}").json()["execution_state"] == "busy", 10, "busy")
    expect(gw.post(f"/api/kernels/{ka}/interrupt", {}), 204)
    res = cha.collect_execution(req, timeout=15)
    assert res.reply.content["status"] == "error" and res.reply.content["ename"] == "KeyboardInterrupt"
    # The admin opens a WebSocket on bob's kernel and runs code in it
    adm = ChannelClient(gw.ws_url(f"/api/kernels/{kb}/channels"),
                        [f"Authorization: token {gw.static_token}"], LEGACY, uuid.uuid4().hex)
    adm.nudge(timeout=30)
    assert adm.run("print(6 * 7)", timeout=30).stdout().strip() == "42"
    adm.close()
    # ... and deletes bob's kernels; bob sees them gone
    expect(gw.delete(f"/api/kernels/{kb}"), 204)
    expect(gw.delete(f"/api/sessions/{sb['id']}"), 204)
    assert bob.get(f"/api/kernels/{kb}").status_code == 404
    assert expect(bob.get("/api/kernels"), 200).json() == []
    assert expect(bob.get("/api/sessions"), 200).json() == []
    assert chb.wait_closed(15) and chb2.wait_closed(15)
    # alice is unaffected
    assert cha.run("print(secret_value)", timeout=30).stdout().strip() == "42"
    cha.close()
    expect(alice.delete(f"/api/sessions/{sa}"), 204)
    assert alice.get(f"/api/kernels/{ka}").status_code == 404


# =====================================================================================
# Revocation from another process (the admin CLI), user disable/enable
# =====================================================================================

def test_cli_revoke_from_another_process_closes_sockets_4001(gw):
    u = gw.cli_token("cli-rev")
    keep = gw.cli_token("cli-rev")
    kid = u.start()
    chans = [u.channel(kid), u.channel(kid, V1, query_token=True)]
    kept = keep.channel(kid)
    for ch in chans + [kept]:
        assert ch.kernel_info(timeout=10).reply is not None
    watcher = CloseWatcher(chans, timeout=5)
    # The CLI's commit reaches the gateway through inotify, not a poll.
    assert gw.metric("kernelgate_token_watch") == 1
    wakeups0 = gw.metric("kernelgate_token_db_wakeups_total")
    t0 = time.time()
    p = gw.cli("token", "revoke", u.token_id)
    t_ret = time.time()
    assert p.stdout.strip() == f"revoked {u.token_id}"
    for t, code, reason in watcher.join():
        assert t is not None, "WebSocket not closed after `kernelgate token revoke` in another process"
        assert code == CLOSE_REVOKED and reason, (code, reason)
        print(f"\n[CLI revoke] close {1e3 * (t - t_ret):+.1f} ms after the CLI exited, "
              f"{1e3 * (t - t0):.1f} ms after it started")
        assert t - t_ret < 2.0
    assert gw.metric("kernelgate_token_db_wakeups_total") > wakeups0
    assert_refused_json(u.get("/api/me"))
    assert ws_refusal(u.ws_url(f"/api/kernels/{kid}/channels"), [f"Authorization: token {u.token}"]) == 403
    assert kept.kernel_info(timeout=10).reply is not None
    kept.close()
    rows = json.loads(gw.cli("token", "list", "--json", "--all", "--user", "cli-rev").stdout)
    state = {r["id"]: r["revoked_at"] for r in rows}
    assert state[u.token_id] and state[keep.token_id] is None
    active = json.loads(gw.cli("token", "list", "--json", "--user", "cli-rev").stdout)
    assert [r["id"] for r in active] == [keep.token_id], "token list without --all shows revoked tokens"
    expect(keep.delete(f"/api/kernels/{kid}"), 204)


def test_cli_user_disable_closes_all_user_sockets_and_enable_restores(gw):
    t1 = gw.cli_token("cli-dis")
    t2 = gw.rest_token("cli-dis")
    bystander = gw.cli_token("cli-bystander")
    k1 = t1.start()
    kb = bystander.start()
    chans = [t1.channel(k1), t2.channel(k1, V1), t2.channel(k1, query_token=True)]
    by = bystander.channel(kb)
    admin_ch = ChannelClient(gw.ws_url(f"/api/kernels/{k1}/channels"),
                             [f"Authorization: token {gw.static_token}"], LEGACY, uuid.uuid4().hex)
    for ch in chans + [by, admin_ch]:
        assert ch.kernel_info(timeout=10).reply is not None
    watcher = CloseWatcher(chans, timeout=5)
    closed_before = gw.metric("kernelgate_ws_closed_auth_total")
    t0 = time.time()
    assert gw.cli("user", "disable", "cli-dis").stdout.strip() == "disabled cli-dis"
    t_ret = time.time()
    for t, code, reason in watcher.join():
        assert t is not None, "a socket of the disabled user stayed open"
        assert code == CLOSE_REVOKED and reason, (code, reason)
        print(f"\n[CLI user disable] close {1e3 * (t - t_ret):+.1f} ms after the CLI exited "
              f"({1e3 * (t - t0):.1f} ms after it started)")
        assert t - t_ret < 2.0
    # The commit wakes the gateway more than once (inotify events, the 1 s timer); each
    # socket is closed, and counted, once.
    time.sleep(1.5)
    assert gw.metric("kernelgate_ws_closed_auth_total") - closed_before == len(chans)
    for u in (t1, t2):
        assert_refused_json(u.get("/api/me"))
        assert ws_refusal(u.ws_url(f"/api/kernels/{k1}/channels"), [f"Authorization: token {u.token}"]) == 403
    # A disabled user gets no new token either way
    assert gw.cli("token", "create", "--user", "cli-dis", check=False).returncode != 0
    assert gw.post("/api/admin/tokens", {"user": "cli-dis"}).status_code == 400
    users = {u["name"]: u for u in json.loads(gw.cli("user", "list", "--json").stdout)}
    assert users["cli-dis"]["disabled"] is True and users["cli-bystander"]["disabled"] is False
    # Other users, and the admin on the same kernel, keep working
    assert by.kernel_info(timeout=10).reply is not None
    assert admin_ch.kernel_info(timeout=10).reply is not None
    # Unknown user
    p = gw.cli("user", "disable", "no-such-user-xyz", check=False)
    assert p.returncode != 0 and "no user" in p.stderr
    # Enable: both tokens work again (they were not revoked), REST and WebSocket
    assert gw.cli("user", "enable", "cli-dis").stdout.strip() == "enabled cli-dis"
    for u in (t1, t2):
        assert u.me()["user"] == "cli-dis"
        ch = u.channel(k1)
        assert ch.kernel_info(timeout=10).reply is not None
        ch.close()
    for ch in (by, admin_ch):
        ch.close()
    expect(t1.delete(f"/api/kernels/{k1}"), 204)
    expect(bystander.delete(f"/api/kernels/{kb}"), 204)


def test_rest_user_disable_with_kernel_shutdown_and_enable(gw):
    u = gw.cli_token("rest-dis")
    k1, k2 = u.start(), u.start()
    ch = u.channel(k1)
    assert ch.kernel_info(timeout=10).reply is not None
    watcher = CloseWatcher([ch], timeout=10)
    expect(gw.post("/api/admin/users/rest-dis/disable", {"shutdown_kernels": True}), 204)
    [(t, code, reason)] = watcher.join()
    assert t is not None and code == CLOSE_REVOKED and reason, (code, reason)
    ids = {k["id"] for k in expect(gw.get("/api/kernels"), 200).json()}
    assert k1 not in ids and k2 not in ids, "shutdown_kernels left the user's kernels running"
    assert_refused_json(u.get("/api/me"))
    assert_refused_json(gw.post("/api/admin/users/no-such-user-xyz/disable", {}), 404)
    assert_refused_json(gw.post("/api/admin/users/no-such-user-xyz/enable", {}), 404)
    expect(gw.post("/api/admin/users/rest-dis/enable", {}), 204)
    assert u.me()["user"] == "rest-dis"
    assert expect(u.get("/api/kernels"), 200).json() == []
    actions = [e["action"] for e in expect(gw.get("/api/admin/audit"), 200).json()
               if e["target"] == "rest-dis"]
    assert {"user.disable", "user.enable", "user.shutdown_kernels"} <= set(actions), actions


# =====================================================================================
# Revoke under load: 200 WebSockets across 10 tokens
# =====================================================================================

def _pct(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def test_revoke_under_load_200_sockets_10_tokens(gw):
    users = [f"load-{i}" for i in range(5)]
    tokens: List[User] = []
    kernels: Dict[str, str] = {}
    for name in users:
        tokens.append(gw.cli_token(name))
        tokens.append(gw.rest_token(name))
        kernels[name] = tokens[-1].start()
    socks: Dict[str, List[ChannelClient]] = {t.token_id: [] for t in tokens}
    t_open = time.monotonic()
    for i in range(20):
        for t in tokens:
            socks[t.token_id].append(t.channel(kernels[t.name], V1 if i % 2 else LEGACY,
                                               query_token=(i % 5 == 0)))
    print(f"\n[load] opened 200 WebSockets in {time.monotonic() - t_open:.2f}s")
    assert expect(gw.get("/api/health", auth=False), 200).json()["websockets"] >= 200
    for t in tokens:       # every socket works before the revoke (a sample per token)
        assert socks[t.token_id][0].kernel_info(timeout=10).reply is not None

    def revoke_and_measure(victim: User, how: str) -> List[float]:
        chans = socks.pop(victim.token_id)
        watcher = CloseWatcher(chans, timeout=10)
        t0 = time.time()
        if how == "REST":
            expect(gw.delete(f"/api/admin/tokens/{victim.token_id}"), 204)
        else:
            gw.cli("token", "revoke", victim.token_id)
        t_ret = time.time()
        result = watcher.join()
        missing = [i for i, (t, _, _) in enumerate(result) if t is None]
        assert not missing, f"{len(missing)} of the revoked token's 20 sockets stayed open"
        codes = {(code, reason) for _, code, reason in result}
        assert all(code == CLOSE_REVOKED and reason for code, reason in codes), codes
        lat = [(t - t_ret) * 1e3 for t, _, _ in result]
        from_start = [(t - t0) * 1e3 for t, _, _ in result]
        print(f"[load] {how} revoke of 1 token (20 sockets, 200 open): close latency after the "
              f"revoke returned p50 {_pct(lat, 0.5):+.1f} ms, max {max(lat):+.1f} ms; "
              f"after it started p50 {_pct(from_start, 0.5):.1f} ms, max {max(from_start):.1f} ms; "
              f"revoke call took {(t_ret - t0) * 1e3:.1f} ms")
        assert max(lat) < 5000
        return lat

    revoke_and_measure(tokens[0], "REST")

    def still_working(expected: int):
        alive = [ch for chans in socks.values() for ch in chans]
        assert len(alive) == expected
        closed = [ch for ch in alive if ch.closed_by_peer]
        assert not closed, f"{len(closed)} sockets of other tokens were closed"
        t_check = time.monotonic()
        for ch in alive:       # a kernel_info round trip on every remaining socket
            res = ch.kernel_info(timeout=15)
            assert res.reply is not None and res.reply.msg_type == "kernel_info_reply"
        print(f"[load] kernel_info round trip OK on all {expected} other sockets "
              f"({time.monotonic() - t_check:.2f}s)")
        for chans in socks.values():
            for ch in chans:
                ch.drain_pending()
    still_working(180)
    # The same user's other token is unaffected, as are its sockets (checked above)
    assert tokens[1].me()["user"] == tokens[0].name
    # Second round: from another process, the admin CLI
    revoke_and_measure(tokens[3], "CLI")
    still_working(160)
    for chans in socks.values():
        for ch in chans:
            ch.close()
    for name, kid in kernels.items():
        expect(gw.delete(f"/api/kernels/{kid}"), 204)


# =====================================================================================
# Per-user and global kernel limits, counting starts in flight
# =====================================================================================

def test_kernel_limits_per_user_and_global_count_starts_in_flight(tmp_path_factory):
    g = UserGateway(tmp_path_factory.mktemp("limits"),
                    ["--max-kernels-per-user", "2", "--max-kernels", "5"])
    try:
        a, b, c = (g.cli_token(n) for n in ("lim-a", "lim-b", "lim-c"))
        a.start()
        a.start()
        r = a.post("/api/kernels", {"name": "echo"})
        j = assert_refused_json(r, 403)
        assert "limit" in j["message"].lower() and j["reason"], j
        # The limit is per user: b can still start; sessions count too
        b.start()
        r = a.post("/api/sessions", {"path": "lim.ipynb", "type": "notebook", "kernel": {"name": "echo"}})
        assert r.status_code == 403, (r.status_code, r.text)
        b.start()
        # Global: 4 running, c can start one, then the total of 5 refuses c's second
        c.start()
        j = assert_refused_json(c.post("/api/kernels", {"name": "echo"}), 403)
        assert "maximum" in j["message"].lower() or "limit" in j["message"].lower(), j
        # Free a's and b's and c's kernels, then a concurrent burst
        for k in expect(g.get("/api/kernels"), 200).json():
            expect(g.delete(f"/api/kernels/{k['id']}"), 204)
        assert expect(g.get("/api/kernels"), 200).json() == []

        def burst(users: List[User], per_user: int) -> List[Tuple[str, int]]:
            jobs = [u for u in users for _ in range(per_user)]
            barrier = threading.Barrier(len(jobs))

            def one(u: User):
                s = requests.Session()
                barrier.wait(10)
                r = s.post(g.base_url + "/api/kernels", json={"name": "echo"},
                           headers={"Authorization": f"token {u.token}"}, timeout=60)
                return u.name, r.status_code
            with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
                return list(ex.map(one, jobs))
        # One user, five concurrent starts: at most 2
        results = burst([a], 5)
        ok = [r for r in results if r[1] == 201]
        assert all(s in (201, 403) for _, s in results), results
        assert len(ok) == 2, f"{len(ok)} of 5 concurrent starts by one user succeeded (limit 2): {results}"
        mine = [k for k in expect(g.get("/api/kernels"), 200).json()]
        assert len(mine) == 2
        for k in mine:
            expect(g.delete(f"/api/kernels/{k['id']}"), 204)
        # Three users, four concurrent starts each (12): per-user 2 and global 5 both hold
        results = burst([a, b, c], 4)
        ok = [r for r in results if r[1] == 201]
        per = {n: sum(1 for m, s in ok if m == n) for n in ("lim-a", "lim-b", "lim-c")}
        assert all(s in (201, 403) for _, s in results), results
        assert len(ok) == 5 and max(per.values()) <= 2, (per, results)
        kernels = expect(g.get("/api/kernels"), 200).json()
        assert len(kernels) == 5, kernels
        users = {u["name"]: u["kernels"] for u in expect(g.get("/api/admin/users"), 200).json()}
        assert all(users[n] <= 2 for n in per), users
        for k in kernels:
            expect(g.delete(f"/api/kernels/{k['id']}"), 204)
    finally:
        g.stop()


# =====================================================================================
# Warm pool: a kernel started ahead is each user's own, set up as their request asks
# =====================================================================================

def pool_gauge(g: UserGateway, spec: str, state: str) -> int:
    text = expect(g.get("/metrics"), 200).text
    m = re.search(rf'^kernelgate_warm_pool_kernels\{{kernelspec="{re.escape(spec)}",'
                  rf'state="{state}"\}} (\d+)$', text, re.M)
    assert m, f"no warm pool gauge for {spec}/{state}"
    return int(m.group(1))


def test_warm_pool_hands_each_user_a_fresh_kernel_set_up_as_asked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    g = UserGateway(tmp, ["--warm-pool", "pyreal=1,echo=1"])
    try:
        poll_until(lambda: pool_gauge(g, "pyreal", "ready") == 1 and
                   pool_gauge(g, "echo", "ready") == 1, 45, "warm pools ready")
        # Kernels waiting in the pool belong to no one: not even the admin lists them.
        assert expect(g.get("/api/kernels"), 200).json() == []
        alice, bob = g.cli_token("wp-alice"), g.cli_token("wp-bob")
        work = tmp / "alice-work"
        work.mkdir()
        ka = alice.start("pyreal", env={"KERNEL_WORKING_DIR": str(work), "KERNEL_X": "x1",
                                        "KERNEL_USERNAME": "root"})
        assert g.metric("kernelgate_warm_pool_claims_total") == 1
        cha = alice.channel(ka, V1)
        res = cha.run("import os; print(os.getcwd(), os.environ['KERNEL_USERNAME'], "
                      "os.environ['KERNEL_X'])", timeout=30)
        # The working dir and env of the request, KERNEL_USERNAME from the token (as in a
        # cold start), and the set-up did not count as a cell.
        assert res.stdout().split() == [str(work), "wp-alice", "x1"], res
        assert res.reply.content["execution_count"] == 1, res.reply.content
        assert cha.run("secret = 42", timeout=30).status == "ok"

        # The pool fills again; bob gets another kernel, his own and fresh.
        poll_until(lambda: pool_gauge(g, "pyreal", "ready") == 1, 45, "pool refilled")
        kb = bob.start("pyreal")
        assert kb != ka
        assert g.metric("kernelgate_warm_pool_claims_total") == 2
        chb = bob.channel(kb)
        res = chb.run("import os; print(os.environ['KERNEL_USERNAME'], 'secret' in globals())",
                      timeout=30)
        assert res.stdout().split() == ["wp-bob", "False"], res
        assert [k["id"] for k in expect(alice.get("/api/kernels"), 200).json()] == [ka]
        assert [k["id"] for k in expect(bob.get("/api/kernels"), 200).json()] == [kb]
        assert bob.get(f"/api/kernels/{ka}").status_code == 404
        assert {k["id"] for k in expect(g.get("/api/kernels"), 200).json()} == {ka, kb}

        # The echo kernel is not Python: KERNEL_USERNAME cannot be set in it afterwards, so a
        # request starts a kernel of its own and the pooled one keeps waiting.
        ke = alice.start("echo")
        assert g.metric("kernelgate_warm_pool_misses_total") == 1
        assert g.metric("kernelgate_warm_pool_claims_total") == 2
        assert pool_gauge(g, "echo", "ready") == 1
        assert ke not in (ka, kb)
        cha.close()
        chb.close()
    finally:
        g.stop()
    # SIGTERM stopped the pool's kernels with the others: nothing of this gateway is left.
    poll_until(lambda: not _pids_with_marker(g.marker), 15, "kernels gone after SIGTERM")


# =====================================================================================
# H03 / H04: a forced 500 reveals nothing, and logs no token
# =====================================================================================

def test_h03_h04_internal_error_logs_no_token_and_body_is_generic(tmp_path_factory):
    g = UserGateway(tmp_path_factory.mktemp("h03"), [])
    try:
        u = g.cli_token("h03-user")
        _, secret = token_parts(u.token)
        assert g.get("/api/me").status_code == 200    # the admin token's last-use is fresh
        # Another process holds the write lock on auth.db longer than the gateway waits for
        # it: creating a token then fails inside the handler: a 500.
        db = sqlite3.connect(str(g.data_dir / "auth.db"), timeout=1, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            headers = {"Referer": f"http://example.com/?token={u.token}",
                       "Cookie": f"token={u.token}; other={secret}",
                       "X-Forwarded-For": u.token}
            r = g.post(f"/api/admin/tokens?token={u.token}", {"user": "h03-new", "note": secret},
                       headers=headers, timeout=30)
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert r.status_code in (500, 503), \
            f"expected a 5xx with the database locked, got {r.status_code} {r.text[:300]}"
        j = r.json()
        assert r.headers["Content-Type"].startswith("application/json")
        body = r.text
        for leak in ("database", "sqlite", "locked", str(g.data_dir), "/", ".cpp", "Traceback",
                     "exception", "0.1.0", u.token, secret):
            assert leak not in body, f"5xx body leaks {leak!r}: {body}"
        assert set(j) == {"reason", "message"}, j
        log = g.log_text()
        assert "internal error" in log.lower(), "the 500 was not logged (vacuous check)"
        assert secret not in log and u.token not in log
        # The gateway is fine afterwards
        ALL_TOKENS.append(expect(g.post("/api/admin/tokens", {"user": "h03-after", "expires": "1h"}),
                                 201).json()["token"])
    finally:
        g.stop()


def test_h05_origin_allow_list_is_an_exact_match(tmp_path_factory):
    g = UserGateway(tmp_path_factory.mktemp("origin"),
                    ["--allow-origin", "https://trusted.example.com",
                     "--ws-allow-origin", "https://ws.example.com"])
    try:
        u = g.cli_token("h05-user")
        kid = u.start()
        url = u.ws_url(f"/api/kernels/{kid}/channels")
        auth = f"Authorization: token {u.token}"
        for evil in ("https://trusted.example.com.evil.com", "https://evil.example",
                     "http://trusted.example.com", "https://trusted.example.com:8443",
                     "https://ws.example.com.evil.com", "https://xtrusted.example.com", "null",
                     f"http://127.0.0.1:{g.port}.evil.com", "https://TRUSTED.example.com.evil"):
            assert ws_refusal(url, [auth], origin=evil) == 403, evil
            r = u.get("/api/kernels", headers={"Origin": evil})
            assert r.headers.get("Access-Control-Allow-Origin") in (None, "https://trusted.example.com"), \
                (evil, r.headers.get("Access-Control-Allow-Origin"))
        for good in ("https://trusted.example.com", "https://ws.example.com",
                     f"http://127.0.0.1:{g.port}", None):
            opts = {"origin": good} if good else {"suppress_origin": True}
            ws = websocket.create_connection(url, header=[auth], timeout=10, **opts)
            ws.close()
        # Without a token the answer does not depend on the Origin
        assert ws_refusal(url, [], origin="https://trusted.example.com") == 403
        assert ws_refusal(url, [], origin="https://evil.example") == 403
    finally:
        g.stop()


# =====================================================================================
# Storage: nothing on disk verifies a token without the pepper; no secret in any log
# =====================================================================================

def test_storage_no_secret_on_disk_modes_and_no_secret_in_logs(gw):
    # A last token, used once, so that the database has its last_used row written too
    u = gw.cli_token("store-user", note="scan")
    assert u.me()["user"] == "store-user"
    assert len(ALL_TOKENS) >= 2, len(ALL_TOKENS)
    secrets_ = []
    for tok in ALL_TOKENS:
        secrets_.append(tok)
        m = TOKEN_RE.match(tok)
        if m:
            secrets_.append(m.group(2))
    for g in ALL_GATEWAYS:
        files = [p for p in g.data_dir.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert "auth.db" in names and "pepper" in names, names
        pepper = (g.data_dir / "pepper").read_text()
        pepper_keys = re.findall(r"^v\d+ ([0-9a-f]{64})$", pepper, re.M)
        assert pepper_keys, "pepper file format"
        for p in files:
            if p.name == "pepper":
                continue
            raw = p.read_bytes()
            for s in secrets_:
                assert s.encode() not in raw, f"{p} contains a token or secret ({s[:6]}...)"
            for k in pepper_keys:
                assert k.encode() not in raw and bytes.fromhex(k) not in raw, f"{p} contains the pepper"
        # Modes
        assert stat.S_IMODE(os.stat(g.data_dir).st_mode) == 0o700, oct(os.stat(g.data_dir).st_mode)
        assert stat.S_IMODE(os.stat(g.data_dir / "pepper").st_mode) == 0o600
        for suffix in ("", "-wal", "-shm"):
            f = g.data_dir / f"auth.db{suffix}"
            if f.exists():
                assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, f"{f} is {oct(os.stat(f).st_mode)}"
        # The log and every CLI output except `token create`'s stdout (the one place a token
        # is shown, once)
        log = g.log_text()
        for s in secrets_:
            assert s not in log, f"{g.tmp}/gateway.log contains a token or secret ({s[:6]}...)"
        for argv, out, err in g.cli_outputs:
            if argv[1:3] == ["token", "create"]:
                # the one place a token is shown: stdout is that token and nothing else
                assert out == "" or TOKEN_RE.match(out.strip()), out
                out = ""
            for s in secrets_:
                assert s not in err, f"stderr of {argv[1:4]} contains a secret"
                assert s not in out, f"stdout of {argv[1:4]} contains a secret"
    # The database holds digests only: 32-byte blobs, one per token
    db = sqlite3.connect(f"file:{gw.data_dir / 'auth.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, digest, length(digest) FROM tokens").fetchall()
        assert rows and all(n == 32 for _, _, n in rows), rows[:3]
        cols = [r[1] for r in db.execute("PRAGMA table_info(tokens)").fetchall()]
        assert not any("secret" in c or c == "token" for c in cols), cols
    finally:
        db.close()


# =====================================================================================
# How kernels are reached: --kernel-transport auto (the default)
# =====================================================================================

def test_kernel_transport_auto_ipc_for_ipykernel_tcp_for_others(gw):
    """ipykernel gets Unix sockets in the 0700 runtime dir, other kernels loopback TCP; both
    work end to end, and the socket files go when the kernel goes."""
    runtime = gw.data_dir / "runtime"
    user = gw.cli_token("tr-user")
    kpy = user.start("pyreal")
    kecho = user.start("echo")
    info_py = json.loads((runtime / f"kernel-{kpy}.json").read_text())
    info_echo = json.loads((runtime / f"kernel-{kecho}.json").read_text())
    assert info_py["transport"] == "ipc", info_py["transport"]
    assert info_echo["transport"] == "tcp" and info_echo["ip"] == "127.0.0.1"
    assert Path(info_py["ip"]).parent == runtime
    socks = [Path(f"{info_py['ip']}-{info_py[p]}") for p in
             ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
    assert all(stat.S_ISSOCK(s.stat().st_mode) for s in socks), socks
    # (ipykernel may add the sticky bit to the directory of its connection file)
    assert stat.S_IMODE(runtime.stat().st_mode) & 0o777 == 0o700
    for kid in (kpy, kecho):
        ch = user.channel(kid, V1)
        ch.nudge(timeout=45)
        ch.close()
    ch = user.channel(kpy, V1)
    assert ch.run("print('via ipc')", timeout=30).stdout().strip() == "via ipc"
    ch.close()
    expect(user.delete(f"/api/kernels/{kpy}"), 204)
    expect(user.delete(f"/api/kernels/{kecho}"), 204)
    assert not any(s.exists() for s in socks), socks
    assert not (runtime / f"kernel-{kpy}.json").exists()

    # `kernelgate kernelspecs` says which transport auto gives each spec.
    p = subprocess.run([kernelgate_binary(), "kernelspecs", "--kernel-dir", str(gw.tmp / "kernels"),
                        "--no-conda", "--json"], env=gw.env, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    specs = json.loads(p.stdout)
    assert specs["pyreal"]["transport"] == "ipc" and specs["echo"]["transport"] == "tcp", specs
