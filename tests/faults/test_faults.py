# SPDX-License-Identifier: BSD-3-Clause
"""Faults a real kernel or a polite client cannot produce, against the real gateway.

The kernel here is kg-echo-kernel (bench/echo_kernel.cpp, built on kernelgate's own wire
library), told by the code of each cell to forge signatures, replay frames, flood output or die.
Clients are raw WebSocket/HTTP sockets sending hostile input. Each test asserts what the
gateway must do: drop and count, bound memory, answer with the right status or close code.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from conftest import ManagedProcess, clean_child_env, free_port, kernelgate_binary  # noqa: E402
from kg_client import (LEGACY, V1, V1_PROTOCOL, ChannelClient, Deadline, RestClient,  # noqa: E402
                       decode_legacy_text, decode_v1, encode_legacy_text, encode_v1, expect,
                       make_msg, poll_until)

# websocket-client 1.2.3 refuses close code 1013 ("Try Again Later", registered with IANA for
# RFC 6455 and accepted by browsers); let it through so the test can read the code we send.
import websocket._abnf as _abnf  # noqa: E402
if 1013 not in _abnf.VALID_CLOSE_STATUS:
    _abnf.VALID_CLOSE_STATUS = _abnf.VALID_CLOSE_STATUS + (1013,)

ECHO = os.environ.get("KG_ECHO_KERNEL") or str(Path(kernelgate_binary()).parent / "kg-echo-kernel")


class FaultGateway(RestClient):
    def __init__(self, tmp: Path, extra):
        self.tmp = tmp
        self.token = secrets.token_hex(16)
        self.port = free_port()
        specs = tmp / "kernels"
        for name, argv in {
            "echo": [ECHO, "-f", "{connection_file}"],
            "slowstart": [ECHO, "-f", "{connection_file}", "--slow-start", "700"],
            "dies": ["/bin/false", "{connection_file}"],
            "hangs": ["/bin/sleep", "1000"],
            "python3": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        }.items():
            (specs / name).mkdir(parents=True, exist_ok=True)
            (specs / name / "kernel.json").write_text(json.dumps(
                {"argv": argv, "display_name": name, "language": "echo",
                 "interrupt_mode": "message"}))
        super().__init__(f"http://127.0.0.1:{self.port}", self.token)
        marker = uuid.uuid4().hex
        argv = [kernelgate_binary(), "serve", "--ip", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(tmp / "data"), "--auth-token", self.token,
                "--kernel-dir", str(specs), *extra]
        self.process = ManagedProcess("kernelgate", argv, clean_child_env(tmp, marker), tmp,
                                      tmp / "gateway.log", marker)

        def probe():
            r = self.get("/api", timeout=2)
            return r.status_code == 200, f"GET /api -> {r.status_code}"
        self.process.wait_ready(probe, 30)

    def log_tail(self, chars: int = 6000) -> str:
        return self.process.log_tail(chars)

    def metric_float(self, name: str) -> float:
        text = expect(self.get("/metrics"), 200).text
        m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
        assert m, f"metric {name} missing from /metrics"
        return float(m.group(1))

    def metrics(self, *names: str) -> dict:
        """Several metrics from one /metrics response (one consistent snapshot)."""
        text = expect(self.get("/metrics"), 200).text
        out = {}
        for name in names:
            m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
            assert m, f"metric {name} missing from /metrics"
            out[name] = float(m.group(1))
        return out

    def metric(self, name: str) -> int:
        value = self.metric_float(name)
        assert value == int(value), f"metric {name} is not a whole number: {value}"
        return int(value)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def channel(self, kernel_id: str, protocol: str = LEGACY, session_id=None) -> ChannelClient:
        return ChannelClient(self.ws_url(f"/api/kernels/{kernel_id}/channels"),
                             [f"Authorization: token {self.token}"], protocol,
                             session_id or uuid.uuid4().hex)

    def start(self, name: str = "echo") -> str:
        return expect(self.post("/api/kernels", {"name": name}), 201).json()["id"]


@pytest.fixture(scope="module")
def fgw(tmp_path_factory):
    g = FaultGateway(tmp_path_factory.mktemp("faults"),
                     ["--launch-timeout", "3", "--ws-max-message", str(1 << 20),
                      "--ws-high-watermark", str(1 << 20), "--ws-low-watermark", str(256 << 10),
                      "--ws-hard-limit", str(8 << 20)])
    yield g
    crashed = g.process.proc.poll()
    g.process.stop()
    assert crashed is None, f"gateway died with {crashed}:\n{g.log_tail()}"


def test_forged_missing_and_replayed_signatures_are_dropped_and_counted(fgw):
    kid = fgw.start()
    ch = fgw.channel(kid)
    before = fgw.metric("kernelgate_kernel_messages_rejected_total")
    for code, good in (("badsig:good-after-bad", "good-after-bad"),
                       ("nosig:good-after-none", "good-after-none"),
                       ("replay:only-once", "only-once")):
        res = ch.run(code, timeout=20)
        assert res.reply is not None and res.reply.content["status"] == "ok", res
        assert "FORGED" not in res.stdout(), res
        assert res.stdout().count(good) == 1, res
    # One forged, one unsigned, one replayed frame.
    assert poll_until(lambda: fgw.metric("kernelgate_kernel_messages_rejected_total") - before >= 3,
                      10, "rejections counted")
    assert fgw.metric("kernelgate_kernel_messages_rejected_total") - before == 3
    ch.close()


@pytest.mark.parametrize("protocol", [V1, LEGACY])
def test_output_bursts_leave_in_batched_socket_writes(fgw, protocol):
    kid = fgw.start()
    ch = fgw.channel(kid, protocol)
    assert ch.run("warm-up", timeout=20).reply is not None
    frames0 = fgw.metric("kernelgate_ws_messages_out_total")
    writes0 = fgw.metric("kernelgate_ws_socket_writes_total")
    dropped0 = fgw.metric("kernelgate_ws_slow_client_dropped_total")
    # ~600 KiB of legacy frames: under this gateway's 1 MiB high watermark even when the
    # client reads slower than the kernel writes.
    n = 1000
    res = ch.run(f"flood:{n}:64", timeout=60)
    assert res.status == "ok", res
    # Every message arrives, whole, with nothing dropped (the burst is below the watermark).
    streams = res.of_type("stream")
    assert len(streams) == n, f"{len(streams)} of {n} stream messages"
    assert res.stdout() == "y" * (64 * n)
    assert fgw.metric("kernelgate_ws_slow_client_dropped_total") == dropped0
    frames = fgw.metric("kernelgate_ws_messages_out_total") - frames0
    writes = fgw.metric("kernelgate_ws_socket_writes_total") - writes0
    assert frames >= n + 3, (frames, writes)  # the streams, the reply, busy and idle
    # A burst leaves in batches: far fewer socket writes than frames (one write per frame
    # would make them equal).
    assert 0 < writes <= frames // 2, (frames, writes)
    ch.close()


@pytest.mark.parametrize("protocol", [V1, LEGACY])
def test_a_burst_of_requests_in_one_tcp_write_is_answered_whole_and_in_order(fgw, protocol):
    """The gateway reads a client's burst ahead (up to 64 KiB per read, Beast asks for 1536
    bytes) and sends the kernel the requests of one burst together: nothing may be lost,
    duplicated, reordered or split wrongly at any of those boundaries."""
    kid = fgw.start()
    ch = fgw.channel(kid, protocol)
    assert ch.run("warm-up", timeout=20).reply is not None
    n = 400  # ~200 KiB of frames: several read-ahead chunks, frames cut at chunk edges
    requests_ = []
    wire = bytearray()
    for i in range(n):
        # Codes of varying length, so that frame boundaries fall everywhere in a chunk.
        msg = ch.new_msg("execute_request", {
            "code": f"burst-{i}-" + "z" * (i * 37 % 700), "silent": False,
            "store_history": True, "user_expressions": {}, "allow_stdin": False,
            "stop_on_error": True})
        requests_.append(msg)
        if protocol == V1:
            frame = _abnf.ABNF.create_frame(encode_v1(msg), _abnf.ABNF.OPCODE_BINARY)
        else:
            frame = _abnf.ABNF.create_frame(encode_legacy_text(msg), _abnf.ABNF.OPCODE_TEXT)
        wire += frame.format()
    ch.ws.sock.sendall(bytes(wire))  # one write: the whole burst at once
    replies = []
    deadline = Deadline(120, "all replies of the burst")
    while len(replies) < n and not deadline.expired():
        m = ch.recv(timeout=deadline.remaining())
        if m is not None and m.msg_type == "execute_reply":
            replies.append(m)
    assert len(replies) == n, f"{len(replies)} of {n} replies"
    # One reply per request, in the order sent (the kernel handles a shell socket in order).
    assert [r.parent_id for r in replies] == [r.msg_id for r in requests_]
    assert all(r.content["status"] == "ok" for r in replies)
    ch.close()


def upgrade_with_early_frames(sock, host: str, token: str, kernel_id: str, protocol: str,
                              timeout: float = 20):
    """Sends the WebSocket upgrade request and, in the same write, a kernel_info_request and
    an execute_request (a client that does not wait for the 101; RFC 6455 asks clients to
    wait, proxies and hurried clients do not). Returns (status line, {request msg_type: reply
    Message}) once both replies came, or what came before the timeout."""
    sid = uuid.uuid4().hex
    reqs = [make_msg("kernel_info_request", session=sid),
            make_msg("execute_request", {"code": "early-bird", "silent": False,
                                         "store_history": True, "user_expressions": {},
                                         "allow_stdin": False, "stop_on_error": True},
                     session=sid)]
    head = (f"GET /api/kernels/{kernel_id}/channels?session_id={sid} HTTP/1.1\r\n"
            f"Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: token {token}\r\n")
    if protocol == V1:
        head += f"Sec-WebSocket-Protocol: {V1_PROTOCOL}\r\n"
    wire = bytearray((head + "\r\n").encode())
    for m in reqs:
        if protocol == V1:
            wire += _abnf.ABNF.create_frame(encode_v1(m), _abnf.ABNF.OPCODE_BINARY).format()
        else:
            wire += _abnf.ABNF.create_frame(encode_legacy_text(m), _abnf.ABNF.OPCODE_TEXT).format()
    sock.settimeout(1)
    sock.sendall(bytes(wire))
    deadline = Deadline(timeout, "replies to frames sent with the upgrade request")
    buf = bytearray()

    def need(n: int) -> bool:
        while len(buf) < n and not deadline.expired():
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not chunk:
                return False
            buf.extend(chunk)
        return len(buf) >= n

    while b"\r\n\r\n" not in buf and need(len(buf) + 1):
        pass
    end = buf.find(b"\r\n\r\n")
    assert end >= 0, f"no HTTP response: {bytes(buf[:200])!r}"
    status = bytes(buf[:buf.find(b"\r\n")]).decode()
    del buf[:end + 4]
    wanted = {m.msg_id: m.msg_type for m in reqs}
    replies = {}
    while len(replies) < len(reqs) and need(2):
        opcode, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if not need(4):
                break
            n, at = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            if not need(10):
                break
            n, at = struct.unpack(">Q", buf[2:10])[0], 10
        if not need(at + n):
            break
        payload = bytes(buf[at:at + n])
        del buf[:at + n]
        if opcode == 0x8:
            break  # closed
        if opcode not in (0x1, 0x2):
            continue
        m = decode_v1(payload) if protocol == V1 else decode_legacy_text(payload.decode())
        if m.parent_id in wanted and m.msg_type.endswith("_reply"):
            replies[wanted[m.parent_id]] = m
    return status, replies


@pytest.mark.parametrize("protocol", [V1, LEGACY])
def test_frames_sent_with_the_upgrade_request_are_answered(fgw, protocol):
    """The HTTP parser reads whatever the socket holds; frames that came with the upgrade
    request must reach the WebSocket, not vanish with the parser's buffer."""
    kid = fgw.start()
    with socket.create_connection(("127.0.0.1", fgw.port), timeout=10) as s:
        status, replies = upgrade_with_early_frames(s, f"127.0.0.1:{fgw.port}", fgw.token, kid,
                                                    protocol)
    assert status.startswith("HTTP/1.1 101"), status
    assert set(replies) == {"kernel_info_request", "execute_request"}, replies
    assert replies["kernel_info_request"].msg_type == "kernel_info_reply"
    assert replies["execute_request"].content["status"] == "ok"


def test_a_large_client_message_does_not_keep_its_read_buffer(fgw):
    """A session's read buffer grows to the largest message it reads; one larger than 64 KiB
    goes with that message instead of staying for the rest of the session."""
    kid = fgw.start()
    ch = fgw.channel(kid)
    try:
        assert ch.run("warm-up", timeout=20).reply is not None
        small = fgw.metric("kernelgate_ws_read_buffer_bytes")
        assert small <= 64 * 1024
        # Most of the 1 MiB message limit, in a request the kernel answers.
        big = ch.new_msg("kernel_info_request")
        big.metadata = {"padding": "x" * (900 * 1024)}
        ch.send(big)
        ch.wait_for(lambda m: m.msg_type == "kernel_info_reply" and m.parent_id == big.msg_id,
                    20, "the large request's reply")
        held = fgw.metric("kernelgate_ws_read_buffer_bytes")
        assert held <= 64 * 1024, f"{held} bytes held after a 900 KiB message"
        assert ch.run("after", timeout=20).reply is not None
    finally:
        ch.close()


def test_connections_waiting_for_a_message_hold_no_read_buffer(tmp_path):
    """A session reads no buffer of its own until a message arrives: one that never sent
    anything holds none, and one that did gives its buffer back at the next keep-alive tick
    while it waits."""
    g = FaultGateway(tmp_path, ["--ws-ping-interval", "1"])
    try:
        kid = g.start()
        quiet = websocket.create_connection(g.ws_url(f"/api/kernels/{kid}/channels"),
                                            header=[f"Authorization: token {g.token}"])
        ch = g.channel(kid)
        assert g.get("/api/health").json()["websockets"] == 2
        assert g.metric("kernelgate_ws_read_buffer_bytes") == 0
        # A stream of requests keeps a buffer while it comes.
        sent = [ch.send(ch.new_msg("kernel_info_request")) for _ in range(50)]
        for m in sent:
            ch.wait_for(lambda r, m=m: r.msg_type == "kernel_info_reply" and r.parent_id == m.msg_id,
                        20, "a reply")
        deadline = Deadline(10, "the read buffer to be given back")
        while g.metric("kernelgate_ws_read_buffer_bytes") != 0:
            ch.recv(0.2)
            deadline.check()
        assert ch.run("after-the-release", timeout=20).reply is not None
        quiet.close()
        ch.close()
    finally:
        g.process.stop()


def test_slow_client_memory_is_bounded_and_output_dropped_with_a_notice(fgw):
    slow_kid = fgw.start()
    other_kid = fgw.start()
    slow = fgw.channel(slow_kid)
    other = fgw.channel(other_kid)
    assert other.run("warm-up", timeout=20).reply is not None
    rss0 = fgw.rss_kib()
    dropped0 = fgw.metric("kernelgate_ws_slow_client_dropped_total")
    timeouts0 = fgw.metric("kernelgate_output_hold_timeouts_total")
    # 60,000 x 2 KiB = ~120 MiB of stream output while the client reads nothing.
    req = slow.execute("flood:60000:2048")
    assert poll_until(lambda: fgw.metric("kernelgate_ws_slow_client_dropped_total") > dropped0,
                      60, "output dropped for the slow client")
    # The kernel's output was held for the client once, and the hold ran out (it reads
    # nothing): only then was output dropped.
    assert fgw.metric("kernelgate_output_hold_timeouts_total") == timeouts0 + 1
    peak = 0
    peak_queue = 0
    deadline = Deadline(60, "the flood to finish")
    while not deadline.expired():
        peak = max(peak, fgw.rss_kib())
        peak_queue = max(peak_queue, fgw.metric("kernelgate_ws_queued_bytes"))
        if fgw.get(f"/api/kernels/{slow_kid}").json()["execution_state"] == "idle":
            break
        # Another user's kernel keeps answering while the flood is on.
        r = other.run("still-here", timeout=10)
        assert r.reply is not None and "still-here" in r.stdout()
    # The send queue never exceeds the hard limit (8 MiB here) ...
    assert peak_queue <= (8 << 20) + (64 << 10), peak_queue
    # ... and the process stays far below the 120 MiB of output. (Under AddressSanitizer freed
    # memory sits in its quarantine and every block has redzones, so RSS says nothing there.)
    if "ASAN_OPTIONS" not in os.environ:
        assert peak - rss0 < 64 * 1024, f"gateway grew by {(peak - rss0) // 1024} MiB"
    # Now read: the reply was not dropped, and a notice says how much output was lost.
    res = slow.collect_execution(req, timeout=120)
    assert res.reply is not None and res.reply.content["status"] == "ok"
    # The notice comes once the client's queue has drained, so possibly after the reply.
    notice = slow.wait_for(lambda m: m.msg_type == "stream" and
                           re.search(r"\d+ output messages were dropped", m.content.get("text", "")),
                           30, "the drop notice")
    assert notice.content["name"] == "stderr"
    dropped = int(re.search(r"(\d+) output", notice.content["text"]).group(1))
    assert dropped > 0
    assert fgw.metric("kernelgate_ws_slow_client_dropped_total") - dropped0 >= dropped
    slow.close()
    other.close()


def _read_stream_slowly(ch, req, pause: float, timeout: float = 120) -> tuple[int, bool]:
    """Reads one execution's output, sleeping `pause` after every message (a client slower
    than the kernel). Returns the stdout bytes seen and whether the reply came."""
    deadline = Deadline(timeout, "the slow reader's stream")
    got = 0
    idle = replied = False
    while not (idle and replied) and not deadline.expired():
        m = ch.recv(timeout=deadline.remaining())
        if m is None or m.parent_id != req.msg_id:
            continue
        if m.msg_type == "stream" and m.content.get("name") == "stdout":
            got += len(m.content["text"])
        elif m.msg_type == "status" and m.content.get("execution_state") == "idle":
            idle = True
        elif m.msg_type == "execute_reply":
            replied = True
        time.sleep(pause)
    return got, replied


def test_a_slow_reader_gets_all_of_a_stream_while_the_kernel_waits_for_it(fgw):
    """A single client that reads slower than the kernel writes falls behind by more than its
    high watermark (1 MiB here): the kernel's output is held back instead of dropped, so the
    client gets every byte, and nothing is counted as dropped."""
    kid = fgw.start()
    ch = fgw.channel(kid)
    assert ch.run("warm-up", timeout=20).reply is not None
    dropped0 = fgw.metric("kernelgate_ws_slow_client_dropped_total")
    holds0 = fgw.metric("kernelgate_output_holds_total")
    n = 16 << 20  # 256 messages of 64 KiB: 16 times the high watermark
    req = ch.execute(f"stream:{n}")
    got, replied = _read_stream_slowly(ch, req, pause=0.004)
    assert replied
    assert got == n, f"{got} of {n} bytes"
    assert fgw.metric("kernelgate_ws_slow_client_dropped_total") == dropped0
    assert fgw.metric("kernelgate_output_holds_total") > holds0  # the path was taken
    ch.close()


def test_a_client_that_stopped_reading_does_not_hold_back_one_that_reads(fgw):
    """Two clients on one kernel: one reads (slowly), one reads nothing. The reading one gets
    the whole stream; the other loses output (counted), and it does not stall the kernel."""
    kid = fgw.start()
    reader = fgw.channel(kid)
    stuck = fgw.channel(kid)
    assert reader.run("warm-up", timeout=20).reply is not None
    dropped0 = fgw.metric("kernelgate_ws_slow_client_dropped_total")
    timeouts0 = fgw.metric("kernelgate_output_hold_timeouts_total")
    n = 16 << 20
    req = reader.execute(f"stream:{n}")
    got, replied = _read_stream_slowly(reader, req, pause=0.001)
    assert replied
    assert got == n, f"{got} of {n} bytes"
    # The client that reads nothing lost output ...
    assert fgw.metric("kernelgate_ws_slow_client_dropped_total") > dropped0
    # ... and the kernel never waited for it: a hold for it would have run out (2 s) with
    # the client still behind. Holds while the reader was behind too ended when it caught up.
    assert fgw.metric("kernelgate_output_hold_timeouts_total") == timeouts0
    stuck.close()
    reader.close()


def test_a_streams_memory_goes_back_to_the_system_once_the_gateway_is_idle(tmp_path):
    """The heap keeper: the megabytes a stream queued for a client that read late are kept in
    malloc while output flows, and once memory use has settled the gateway trims the heap
    (its resident memory falls), once: an idle gateway does not trim again."""
    g = FaultGateway(tmp_path, ["--ws-high-watermark", str(32 << 20),
                                "--ws-low-watermark", str(8 << 20), "--heap-settle", "1"])
    try:
        if b"__asan_init" in Path(kernelgate_binary()).read_bytes():
            # The ASan/UBSan build runs on the sanitizer's allocator: the keeper says so and
            # stands aside (README, "Memory").
            assert "does not take glibc's malloc settings" in g.log_tail(20000)
            assert "kernelgate_heap_trims_total" not in expect(g.get("/metrics"), 200).text
            return
        assert "does not take glibc's malloc settings" not in g.log_tail(20000)
        kid = g.start()
        ch = g.channel(kid)
        assert ch.run("warm-up", timeout=20).reply is not None
        time.sleep(2.5)  # settled: the start's memory is trimmed (or not worth it)
        trims0 = g.metric("kernelgate_heap_trims_total")
        # 16 MiB: the gateway's buffers for it stay below malloc's 32 MiB mmap threshold, so
        # only a trim gives them back.
        n = 16 << 20
        req = ch.execute(f"stream:{n}")
        time.sleep(1)  # the client reads late: most of the stream queues in the gateway
        rss_busy = g.rss_kib()
        got, replied = _read_stream_slowly(ch, req, pause=0)
        assert replied
        assert got == n, f"{got} of {n} bytes"
        deadline = Deadline(10, "the stream's memory going back")
        while (rss_idle := g.rss_kib()) > rss_busy - 8192:
            assert not deadline.expired(), f"resident {rss_busy} KiB -> {rss_idle} KiB"
            time.sleep(0.2)
        assert g.metric("kernelgate_heap_trims_total") > trims0
        # (A trim may also have come while the full queue sat still, before the client read.)
        time.sleep(2.5)
        trims1 = g.metric("kernelgate_heap_trims_total")
        time.sleep(3)
        assert g.metric("kernelgate_heap_trims_total") == trims1  # nothing new to give back
        ch.close()
    finally:
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"


def _environ(pid: int) -> dict:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e]
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


def _pids_with_arg(text: str) -> list:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if text.encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def test_the_heap_takes_huge_pages_and_kernels_do_not_inherit_the_setting(tmp_path):
    """--heap-huge-pages (on by default): where the system offers transparent huge pages, the
    gateway starts itself again with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, so a stream's
    buffers are backed by 2 MiB pages; the kernels it starts get the environment it was given,
    without that setting. Without THP (or under a sanitizer's allocator) it stays as it is."""
    g = FaultGateway(tmp_path, ["--log-level", "info"])
    try:
        env = _environ(g.process.pid)
        # Started again or not, the process is named after its binary (ps, top, pgrep).
        comm = Path(f"/proc/{g.process.pid}/comm").read_text().strip()
        assert comm == Path(kernelgate_binary()).name[:15], comm
        asan = b"__asan_init" in Path(kernelgate_binary()).read_bytes()
        if asan or _thp_mode() not in ("madvise", "always"):
            assert "glibc.malloc.hugetlb" not in env.get("GLIBC_TUNABLES", "")
            if not asan:
                assert "heap: no transparent huge pages" in g.log_tail(20000)
            return
        assert env.get("GLIBC_TUNABLES") == "glibc.malloc.hugetlb=1", env.get("GLIBC_TUNABLES")
        assert "heap: transparent huge pages" in g.log_tail(20000)
        kid = g.start()
        ch = g.channel(kid)
        n = 16 << 20
        req = ch.execute(f"stream:{n}")
        time.sleep(1)  # the client reads late: megabytes queue in the gateway
        with open(f"/proc/{g.process.pid}/smaps_rollup") as f:
            huge = next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
        got, replied = _read_stream_slowly(ch, req, pause=0)
        assert replied and got == n, f"{got} of {n} bytes"
        assert huge >= 2048, f"AnonHugePages {huge} KiB while {n} bytes were queued"
        kernels = [p for p in _pids_with_arg(kid) if p != g.process.pid]
        assert kernels, "the kernel's process"
        for pid in kernels:
            kenv = _environ(pid)
            assert "GLIBC_TUNABLES" not in kenv, kenv.get("GLIBC_TUNABLES")
            assert "KERNELGATE_GLIBC_TUNABLES_WAS" not in kenv
        ch.close()
    finally:
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"

    # Off: no second start, and the environment is the one it was given.
    g = FaultGateway(tmp_path / "off", ["--heap-huge-pages", "false"])
    try:
        assert "GLIBC_TUNABLES" not in _environ(g.process.pid)
    finally:
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"


def test_client_that_cannot_keep_up_with_unskippable_output_is_closed_1013(fgw):
    kid = fgw.start()
    ch = fgw.channel(kid)
    closed0 = fgw.metric("kernelgate_ws_slow_client_closed_total")
    ch.execute("results:20000:4096")  # ~80 MiB of execute_result, which is never dropped
    assert poll_until(lambda: fgw.metric("kernelgate_ws_slow_client_closed_total") > closed0,
                      60, "the slow client to be closed")
    code = None
    deadline = Deadline(60, "close frame")
    while not deadline.expired():
        frame = ch.ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(frame.data[:2], "big")
            reason = frame.data[2:].decode()
            break
    assert code == 1013, code
    assert "too slow" in reason
    # The kernel itself is fine once its flood is over.
    poll_until(lambda: fgw.get(f"/api/kernels/{kid}").json()["execution_state"] == "idle", 60,
               "the flood to end")
    ch2 = fgw.channel(kid)
    assert ch2.run("after", timeout=20).reply is not None
    ch2.close()


def test_a_slow_starting_kernel_is_not_flooded_with_kernel_info_requests(fgw):
    """A kernel that binds its sockets and then takes 700 ms to start serving (ipykernel
    importing) finds at most two of the gateway's kernel_info requests waiting, not one per
    back-off step: each would delay the client's first request by one handling."""
    kid = fgw.start("slowstart")
    ch = fgw.channel(kid)
    res = ch.run("stats", timeout=20)
    assert res.reply is not None and res.reply.content["status"] == "ok", res
    m = re.search(r"startup_backlog=(\d+)", res.stdout())
    assert m, res.stdout()
    assert 1 <= int(m.group(1)) <= 2, res.stdout()
    ch.close()
    expect(fgw.delete(f"/api/kernels/{kid}"), 204)


def test_kernel_that_exits_at_start_fails_fast_with_500(fgw):
    t0 = time.monotonic()
    r = fgw.post("/api/kernels", {"name": "dies"})
    assert r.status_code == 500
    assert r.json()["reason"] and "exited" in r.json()["message"]
    assert time.monotonic() - t0 < 3, "failure was not detected before the launch timeout"
    assert all(k["name"] != "dies" for k in fgw.get("/api/kernels").json())


def start_histogram(fgw, spec: str) -> dict:
    """kernelgate_kernel_start_seconds for one kernelspec: {"le": {bound: n}, "sum", "count"}
    (zeros when the gateway has not started that kernelspec yet)."""
    text = expect(fgw.get("/metrics"), 200).text
    assert "# TYPE kernelgate_kernel_start_seconds histogram" in text
    h = {"le": {}, "sum": 0.0, "count": 0}
    for m in re.finditer(rf'^kernelgate_kernel_start_seconds_bucket\{{kernelspec="{spec}",'
                         r'le="([^"]+)"\} (\d+)$', text, re.M):
        h["le"][m.group(1)] = int(m.group(2))
    for part in ("sum", "count"):
        m = re.search(rf'^kernelgate_kernel_start_seconds_{part}\{{kernelspec="{spec}"\}} '
                      r"([0-9.e+-]+)$", text, re.M)
        if m:
            h[part] = float(m.group(1))
    return h


def test_kernel_start_times_and_failed_starts_are_on_metrics(fgw):
    """/metrics has a histogram of launch-to-ready times per kernelspec and a count of the
    launches that never got there. A kernel that takes 700 ms to serve lands past 0.5 s."""
    before = start_histogram(fgw, "slowstart")
    failed = fgw.metric("kernelgate_kernel_start_failures_total")
    kid = fgw.start("slowstart")
    after = start_histogram(fgw, "slowstart")
    assert after["count"] == before["count"] + 1, after
    assert after["sum"] - before["sum"] >= 0.7, (before, after)
    assert after["le"]["0.5"] == before["le"].get("0.5", 0), after
    assert after["le"]["+Inf"] == after["count"], after
    counts = list(after["le"].values())  # in the order of the bounds: cumulative
    assert len(counts) == 14 and counts == sorted(counts), after
    expect(fgw.delete(f"/api/kernels/{kid}"), 204)

    assert fgw.post("/api/kernels", {"name": "dies"}).status_code == 500
    assert fgw.metric("kernelgate_kernel_start_failures_total") == failed + 1
    assert start_histogram(fgw, "dies")["count"] == 0  # a failed launch has no start time


def test_kernel_that_never_answers_times_out_with_500(fgw):
    r = fgw.post("/api/kernels", {"name": "hangs"})
    assert r.status_code == 500
    assert "did not become ready" in r.json()["message"]
    assert all(k["name"] != "hangs" for k in fgw.get("/api/kernels").json())


def test_message_mode_interrupt_reaches_a_hanging_cell(fgw):
    kid = fgw.start()
    ch = fgw.channel(kid, V1)
    req = ch.execute("hang")
    poll_until(lambda: fgw.get(f"/api/kernels/{kid}").json()["execution_state"] == "busy", 10,
               "busy")
    expect(fgw.post(f"/api/kernels/{kid}/interrupt", {}), 204)
    res = ch.collect_execution(req, timeout=10)
    assert res.reply.content["status"] == "error"
    assert res.reply.content["ename"] == "KeyboardInterrupt"
    ch.close()


def _close_code(ws: websocket.WebSocket, timeout: float = 10):
    ws.settimeout(timeout)
    while True:
        frame = ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode("utf-8", "replace")


@pytest.mark.parametrize("protocol,payload,binary,expected", [
    (LEGACY, "{not json", False, 1007),
    (LEGACY, "[" * 100000 + "]" * 100000, False, 1007),
    (LEGACY, b"\xff\xff\xff\xff garbage", True, 1007),
    (V1, (2 ** 63).to_bytes(8, "little") + b"\0" * 64, True, 1007),
    (V1, b"\x01", True, 1007),
    (LEGACY, "x" * ((1 << 20) + 100), False, 1009),
    (LEGACY, "", False, 1007),
    (V1, b"", True, 1007),
], ids=["bad-json", "deep-json", "bad-legacy-binary", "v1-huge-offset-count", "v1-truncated",
        "over-max-message", "empty-text", "v1-empty"])
def test_hostile_frames_close_with_a_code_and_reason(fgw, protocol, payload, binary, expected):
    kid = fgw.start()
    opts = {"header": [f"Authorization: token {fgw.token}"]}
    if protocol == V1:
        opts["subprotocols"] = ["v1.kernel.websocket.jupyter.org"]
    ws = websocket.create_connection(fgw.ws_url(f"/api/kernels/{kid}/channels"), **opts)
    try:
        if binary:
            ws.send_binary(payload)
        else:
            ws.send(payload)
        code, reason = _close_code(ws)
    except (BrokenPipeError, ConnectionResetError, websocket.WebSocketConnectionClosedException):
        # Only for the oversized message: the gateway may close (1009) while the client is
        # still writing the rest of it, so the client never gets to read the close frame.
        assert expected == 1009
        code, reason = 1009, "closed while sending"
    assert code == expected, (code, reason)
    if expected == 1007:
        assert reason, "a close reason is given"
    ws.close()
    # The gateway and the kernel are still fine.
    ch = fgw.channel(kid)
    assert ch.run("ok", timeout=20).reply is not None
    ch.close()


def test_client_writes_to_iopub_or_unknown_channels_are_dropped(fgw):
    kid = fgw.start()
    ch = fgw.channel(kid)
    bad0 = fgw.metric("kernelgate_ws_bad_frames_total")
    for chan in ("iopub", "hb", "foo"):
        ch.send(make_msg("execute_request", {"code": "should-not-run", "silent": False},
                         channel=chan, session=ch.session_id))
    res = ch.run("after-bad-channels", timeout=20)
    assert "should-not-run" not in res.stdout()
    assert res.reply.content["execution_count"] == 1  # nothing else was executed
    assert fgw.metric("kernelgate_ws_bad_frames_total") - bad0 == 3
    ch.close()


def _raw_http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return out


def test_hostile_http_gets_clear_errors(fgw):
    h = f"Authorization: token {fgw.token}\r\n"
    # Body over the limit.
    r = fgw.post("/api/kernels", data=b"{" + b" " * (2 << 20) + b"}",
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # Deep JSON, invalid JSON.
    for body in ("[" * 5000 + "]" * 5000, "{bad", '{"name": 5}', '{"env": []}'):
        r = fgw.post("/api/kernels", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (body[:20], r.status_code)
        assert set(r.json()) >= {"reason", "message"}
    # Oversized headers.
    out = _raw_http(fgw.port, (f"GET /api HTTP/1.1\r\nHost: x\r\n{h}X-Big: " + "a" * 40000 +
                               "\r\n\r\n").encode())
    assert out.startswith(b"HTTP/1.1 431"), out[:80]
    # Request smuggling: both Content-Length and Transfer-Encoding.
    out = _raw_http(fgw.port, (f"POST /api/kernels HTTP/1.1\r\nHost: x\r\n{h}Content-Length: 4\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode())
    assert out.startswith(b"HTTP/1.1 400"), out[:80]
    # Reflected input is JSON, escaped, and not sniffable.
    r = fgw.get("/api/kernels/<script>alert(1)</script>")
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in r.text
    assert fgw.process.proc.poll() is None


def test_tokens_never_reach_the_log(fgw):
    kid = fgw.start()
    fgw.get(f"/api/kernels?token={fgw.token}", auth=False)
    fgw.get("/api/kernels", auth=False, headers={"Authorization": f"Bearer {fgw.token}"})
    fgw.get("/api/kernels?token=wrong-token-value", auth=False)
    ws = websocket.create_connection(
        fgw.ws_url(f"/api/kernels/{kid}/channels?token={fgw.token}&session_id=s"))
    ws.close()
    time.sleep(0.2)
    log = fgw.process.log_text()
    assert fgw.token not in log
    assert "wrong-token-value" not in log
    assert "/api/kernels" in log  # requests are logged, without their query


def test_json_logs_are_one_valid_object_per_line(tmp_path):
    g = FaultGateway(tmp_path, ["--log-format", "json"])
    try:
        kid = g.start()
        g.get('/api/kernels/"quoted\\path\x01')
        g.delete(f"/api/kernels/{kid}")
        lines = [l for l in g.process.log_text().splitlines() if l.startswith("{")]
        assert len(lines) >= 5
        for line in lines:
            rec = json.loads(line)
            assert set(rec) >= {"time", "level", "msg", "pid"}
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", rec["time"])
        assert any("shut down" in json.loads(l)["msg"] for l in lines)
    finally:
        g.process.stop()


def test_kernels_inherit_no_gateway_descriptors(fgw):
    """A kernel holding the gateway's descriptors would keep client connections open after the
    gateway closed them, and could read the databases."""
    kid = fgw.start()
    conn = fgw.tmp / "data" / "runtime" / f"kernel-{kid}.json"
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and
            _cmdline(int(p)).endswith(str(conn))]
    assert len(pids) == 1, pids
    targets = []
    for fd in os.listdir(f"/proc/{pids[0]}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pids[0]}/fd/{fd}"))
        except OSError:
            pass
    assert not [t for t in targets if str(fgw.tmp / "data") in t and not t.endswith(".json")], targets
    # The gateway's own sockets (listener, client connections) are not there either.
    gw_sockets = set()
    for fd in os.listdir(f"/proc/{fgw.process.pid}/fd"):
        try:
            t = os.readlink(f"/proc/{fgw.process.pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:"):
            gw_sockets.add(t)
    assert not gw_sockets & set(targets)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_keepalive_pings_drop_silent_clients_and_keep_live_ones(tmp_path):
    g = FaultGateway(tmp_path, ["--ws-ping-interval", "1"])
    try:
        kid = g.start()
        live = g.channel(kid)
        silent = websocket.create_connection(g.ws_url(f"/api/kernels/{kid}/channels"),
                                             header=[f"Authorization: token {g.token}"])
        # The silent client never reads, so it never answers a ping; the live one reads (and
        # websocket-client answers pings while reading).
        deadline = Deadline(10, "the silent client to be dropped")
        while g.get("/api/health").json()["websockets"] > 1:
            live.recv(0.2)
            deadline.check()
        assert g.get("/api/health").json()["websockets"] == 1
        assert g.metric("kernelgate_ws_closed_silent_total") == 1
        assert live.run("still-alive", timeout=10).reply is not None
        silent.close()
        live.close()
    finally:
        g.process.stop()


def test_the_connection_limit_counts_each_websocket_once(tmp_path):
    """--max-connections counts HTTP connections and WebSockets, an upgraded connection as one
    WebSocket (not also as the HTTP connection it came from): a limit of 4 holds the REST
    client's keep-alive connection and 3 WebSockets, and refuses the next connection."""
    g = FaultGateway(tmp_path, ["--max-connections", "4"])

    def raw_get() -> bytes:
        try:
            return _raw_http(g.port, b"GET /api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                     b"Authorization: token " + g.token.encode() + b"\r\n\r\n")
        except ConnectionResetError:
            return b""
    try:
        kid = g.start()  # the REST client's connection stays open (keep-alive): 1
        chans = [g.channel(kid) for _ in range(2)]  # 3
        assert g.get("/api/health").json()["websockets"] == 2
        assert raw_get().startswith(b"HTTP/1.1 200"), "refused with 3 of 4 connections in use"
        chans.append(g.channel(kid))  # 4: the limit
        assert chans[-1].run("third", timeout=10).reply is not None
        assert raw_get() == b"", "a connection over the limit was served"
        chans.pop().close()
        deadline = Deadline(10, "the closed WebSocket to be counted out")
        while g.get("/api/health").json()["websockets"] != 2:
            deadline.check()
            time.sleep(0.05)
        assert raw_get().startswith(b"HTTP/1.1 200")
        for ch in chans:
            assert ch.run("still-here", timeout=10).reply is not None
            ch.close()
    finally:
        crashed = g.process.proc.poll()
        g.process.stop()
        assert crashed is None, f"gateway died with {crashed}"


def _read_until_eof(sock, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def _close_frame(data: bytes) -> tuple[int, bytes]:
    """The (code, reason) of the close frame among the server's (unmasked) frames."""
    at = 0
    while at + 2 <= len(data):
        opcode, n = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if n == 126:
            n, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        elif n == 127:
            n, at = int.from_bytes(data[at:at + 8], "big"), at + 8
        payload, at = data[at:at + n], at + n
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big"), payload[2:]
    raise AssertionError(f"no close frame in {data[:64]!r}")


def test_a_close_the_client_never_answers_ends_at_the_deadline(fgw):
    kid = fgw.start()
    ws = websocket.create_connection(fgw.ws_url(f"/api/kernels/{kid}/channels"),
                                     header=[f"Authorization: token {fgw.token}"])
    before = fgw.metric("kernelgate_ws_close_deadline_total")
    open_before = fgw.get("/api/health").json()["websockets"]
    # A malformed frame: the gateway sends a close frame (1007) and waits for the answer,
    # which this client never sends.
    ws.send("this is not json")
    deadline = Deadline(20, "the unanswered close to be cut")
    while fgw.metric("kernelgate_ws_close_deadline_total") == before:
        time.sleep(0.2)
        deadline.check()
    assert fgw.metric("kernelgate_ws_close_deadline_total") == before + 1
    # The connection is gone: the close frame, then end of stream.
    code, reason = _close_frame(_read_until_eof(ws.sock, 10))
    assert code == 1007 and b"malformed message" in reason, (code, reason)
    deadline = Deadline(10, "the session to be released")
    while fgw.get("/api/health").json()["websockets"] >= open_before:
        time.sleep(0.1)
        deadline.check()
    ws.sock.close()


def test_a_client_that_closes_but_keeps_the_connection_open_is_cut(tmp_path):
    g = FaultGateway(tmp_path, ["--ws-ping-interval", "1"])
    try:
        kid = g.start()
        ws = websocket.create_connection(g.ws_url(f"/api/kernels/{kid}/channels"),
                                         header=[f"Authorization: token {g.token}"])
        assert g.get("/api/health").json()["websockets"] == 1
        # The client starts the close; the gateway answers and waits for the TCP connection
        # to end, which this client never does.
        ws.send_close(1000, b"bye")
        deadline = Deadline(20, "the half-closed connection to be cut")
        while g.get("/api/health").json()["websockets"] > 0:
            time.sleep(0.2)
            deadline.check()
        assert g.metric("kernelgate_ws_close_deadline_total") == 1
        code, _ = _close_frame(_read_until_eof(ws.sock, 10))  # the gateway's answer
        assert code == 1000
        ws.sock.close()
        assert g.process.proc.poll() is None
    finally:
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _assert_idle_gateway_sleeps(g: FaultGateway) -> None:
    # Idle, the loop sleeps: CPU time barely moves (a loop that kept polling would use about
    # one CPU second per second).
    time.sleep(0.5)
    cpu0 = _cpu_seconds(g.process.pid)
    time.sleep(2)
    used = _cpu_seconds(g.process.pid) - cpu0
    assert used < 0.2, f"an idle gateway used {used:.2f} s of CPU in 2 s"


def _voluntary_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc status")


def test_an_idle_gateway_wakes_about_once_a_second(tmp_path):
    # Token revocations by another process arrive through inotify, so an idle gateway without
    # kernels wakes only for its once-a-second expiry check (polling the token database every
    # 20 ms would be some 150 wake-ups in 3 s).
    g = FaultGateway(tmp_path, [])
    try:
        assert g.metric("kernelgate_token_watch") == 1
        time.sleep(0.5)
        pid = g.process.pid
        before = _voluntary_switches(pid)
        time.sleep(3)
        woke = _voluntary_switches(pid) - before
        assert woke < 30, f"an idle gateway woke {woke} times in 3 s"
    finally:
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"


def test_busy_poll_serves_round_trips_and_an_idle_gateway_still_sleeps(tmp_path):
    # --busy-poll-max-pressure 1: polling whatever else runs (the test suite runs in parallel).
    # A 5 ms window: under a sanitizer build and a loaded machine the kernel's replies take
    # longer than the usual 200 us, and a window they never fall into would find nothing.
    g = FaultGateway(tmp_path, ["--busy-poll", "5000", "--busy-poll-max-pressure", "1"])
    try:
        assert g.metric("kernelgate_busy_poll_microseconds") == 5000
        kid = g.start()
        ch = g.channel(kid, V1)
        hits0 = g.metric("kernelgate_busy_poll_hits_total")
        # Round trips in a row: every one answered, in order, with its own reply.
        for i in range(300):
            res = ch.kernel_info(timeout=10) if i % 2 else ch.run(f"rt-{i}", timeout=10)
            assert res.reply is not None and res.status == "ok", (i, res)
        # Some of the messages were found by polling rather than by waking up.
        assert g.metric("kernelgate_busy_poll_hits_total") > hits0
        assert g.metric("kernelgate_busy_poll_pressure_pauses_total") == 0
        # Idle, the loop blocks rather than polls: CPU time barely moves, and the sleeps
        # counted go up (at least once a second the expiry check wakes it, and each wake-up
        # ends in a sleep). While round trips come closer together than the window, it may
        # never have slept; that depends on the machine's pace, so it is not asserted.
        sleeps0 = g.metric("kernelgate_loop_sleeps_total")
        _assert_idle_gateway_sleeps(g)
        assert g.metric("kernelgate_loop_sleeps_total") > sleeps0
        ch.close()
    finally:
        rc = g.process.stop()
    # Graceful shutdown works from a polling loop: SIGTERM, kernels shut down, exit 0.
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"


def _psi_available() -> bool:
    for path in ("/sys/fs/cgroup/cpu.pressure", "/proc/pressure/cpu"):
        try:
            with open(path) as f:
                if "total=" in f.read():
                    return True
        except OSError:
            pass
    return False


def _round_trips_for(ch, seconds: float) -> None:
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        res = ch.kernel_info(timeout=30)
        assert res.reply is not None and res.status == "ok", (i, res)
        i += 1


def test_busy_polling_pauses_while_other_tasks_wait_for_a_cpu(tmp_path):
    # --busy-poll 200 with the default guard: paused above a CPU pressure of 0.4.
    g = FaultGateway(tmp_path, ["--busy-poll", "200"])
    hogs = []
    try:
        assert g.metric("kernelgate_busy_poll_microseconds") == 200
        kid = g.start()
        ch = g.channel(kid, V1)
        if not _psi_available():
            # No pressure information: polling stays off for good.
            _round_trips_for(ch, 0.5)
            assert g.metric("kernelgate_busy_poll_paused") == 1
            assert g.metric("kernelgate_busy_poll_hits_total") == 0
            assert "no CPU pressure" in g.log_tail()
            return
        # More spinning processes than CPUs: some task always waits for one.
        for _ in range((os.cpu_count() or 1) + 2):
            hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(0.5)
        _round_trips_for(ch, 1.0)  # readings every 250 ms, taken while the loop works
        assert g.metric("kernelgate_busy_poll_paused") == 1
        assert g.metric("kernelgate_busy_poll_pressure_pauses_total") >= 1
        assert g.metric_float("kernelgate_cpu_pressure") > 0.4
        # Paused, round trips still work; the loop sleeps between them instead of polling
        # (sleeps that follow a polling window are not among them).
        hits = g.metric("kernelgate_busy_poll_hits_total")
        sleeps = g.metric("kernelgate_loop_sleeps_total")
        _round_trips_for(ch, 0.3)
        assert g.metric("kernelgate_busy_poll_hits_total") - hits < 10
        assert g.metric("kernelgate_loop_sleeps_total") - sleeps <= 1
        for h in hogs:
            h.kill()
            h.wait()
        hogs.clear()
        # The hogs gone, polling resumes at a reading that finds the CPUs free, and round
        # trips are caught polling again. Other tests may load the machine meanwhile (and
        # pause it again): try until a stretch of round trips stays unpaused, up to 60 s.
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "busy polling never resumed"
            _round_trips_for(ch, 0.3)
            if g.metric("kernelgate_busy_poll_paused") == 1:
                continue
            # Only the polling loop counts its sleeps (each after a window of polling): a paused
            # loop sleeps uncounted. Whether a round trip is also caught polling depends on
            # timing (not in a slow ASan build, where the gaps outlast the window).
            sleeps = g.metric("kernelgate_loop_sleeps_total")
            pauses = g.metric("kernelgate_busy_poll_pressure_pauses_total")
            _round_trips_for(ch, 0.2)
            # One snapshot: separate requests could straddle a reading that pauses again.
            now = g.metrics("kernelgate_busy_poll_pressure_pauses_total",
                            "kernelgate_busy_poll_paused", "kernelgate_cpu_pressure",
                            "kernelgate_loop_sleeps_total")
            if (now["kernelgate_busy_poll_pressure_pauses_total"] == pauses
                    and now["kernelgate_busy_poll_paused"] == 0):
                assert now["kernelgate_cpu_pressure"] <= 0.4
                assert now["kernelgate_loop_sleeps_total"] > sleeps
                break
        ch.close()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"


def test_predictive_polling_polls_for_a_fast_kernel_and_not_for_a_slow_one(tmp_path):
    # A 5 ms budget, unguarded (the test suite runs in parallel): the echo kernel's requests
    # take well under it even in a slow ASan build; ipykernel sleeping 20 ms per cell does not.
    g = FaultGateway(tmp_path, ["--predictive-poll", "5000", "--busy-poll-max-pressure", "1"])
    try:
        assert g.metric("kernelgate_predictive_poll_microseconds") == 5000
        assert g.metric("kernelgate_busy_poll_microseconds") == 0
        py = g.channel(g.start("python3"), V1)
        for i in range(10):
            res = py.run(f"import time; time.sleep(0.02); print({i})", timeout=30)
            assert res.status == "ok" and res.stdout() == f"{i}\n", (i, res)
        # Each request took 20 ms or more: never expected within 5 ms, never polled for.
        assert g.metric("kernelgate_predictive_poll_predictions_total") == 0
        assert g.metric("kernelgate_busy_poll_hits_total") == 0
        assert g.metric_float("kernelgate_busy_poll_idle_seconds_total") == 0
        py.close()

        echo = g.channel(g.start(), V1)
        for i in range(300):
            res = echo.kernel_info(timeout=10) if i % 2 else echo.run(f"rt-{i}", timeout=10)
            assert res.reply is not None and res.status == "ok", (i, res)
        # The echo kernel answers within microseconds: its replies (and the client's next
        # requests) were expected, and some were caught polling rather than by waking up.
        assert g.metric("kernelgate_predictive_poll_predictions_total") > 0
        assert g.metric("kernelgate_busy_poll_hits_total") > 0
        _assert_idle_gateway_sleeps(g)
        echo.close()
    finally:
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"


def test_busy_poll_is_off_by_default_and_bad_values_are_refused(fgw, tmp_path):
    assert fgw.metric("kernelgate_busy_poll_microseconds") == 0
    # Predictive polling is on by default where the kernel reports CPU pressure.
    assert fgw.metric("kernelgate_predictive_poll_microseconds") == (200 if _psi_available() else 0)
    # Paused for good without PSI; with it, paused or not depending on the machine's load.
    paused = fgw.metric("kernelgate_busy_poll_paused")
    assert paused == 1 if not _psi_available() else paused in (0, 1)
    for flag, bad in (("--busy-poll", "-1"), ("--busy-poll", "100001"), ("--busy-poll", "fast"),
                      ("--predictive-poll", "-5"), ("--predictive-poll", "100001"),
                      ("--predictive-poll", "soon"),
                      ("--busy-poll-max-pressure", "-0.1"), ("--busy-poll-max-pressure", "1.5"),
                      ("--busy-poll-max-pressure", "low")):
        p = subprocess.run([kernelgate_binary(), "serve", flag, bad, "--data-dir",
                            str(tmp_path / "data"), "--port", "0"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0, (flag, bad, p.stdout, p.stderr)
        assert flag in p.stderr, (flag, bad, p.stderr)
