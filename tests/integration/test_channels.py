# SPDX-License-Identifier: BSD-3-Clause
"""WebSocket /api/kernels/{id}/channels with real ipykernel kernels.

Most tests run twice: with legacy frames (JSON text, legacy binary for buffers) and with the
v1.kernel.websocket.jupyter.org subprotocol (the `protocol` fixture).
"""
from __future__ import annotations

import os
import signal
import socket
import time
import uuid

import pytest

from kg_client import LEGACY, V1, expect, poll_until
from conftest import pid_alive


@pytest.fixture(scope="module")
def shared_kernel(gw):
    """One kernel for the tests that leave it as they found it (not in gw.kernels: outlives tests)."""
    model = expect(gw.post("/api/kernels", {"name": "python3"}), 201).json()
    yield model
    gw.delete(f"/api/kernels/{model['id']}")


def assert_frames(ch, kinds_allowed):
    bad = [m for m in ch.history if m.frame_kind not in kinds_allowed]
    assert not bad, f"unexpected frame kinds (allowed {kinds_allowed}): {bad[:5]}"


def assert_complete_iopub(res, context):
    """busy, execute_input, ..., idle: nothing of the request's iopub may be lost."""
    types = [m.msg_type for m in res.iopub]
    assert res.states()[:1] == ["busy"] and "execute_input" in types and res.states()[-1:] == ["idle"], (
        f"{context}: incomplete iopub for the request (lost messages): {res.iopub}")


def kernel_pid(ch) -> int:
    res = ch.run("import os; print(os.getpid())")
    assert res.status == "ok", res.reply
    return int(res.stdout().strip())


# --------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------

def test_execute_print_stream(gw, shared_kernel, protocol):
    ch = gw.open_channel(shared_kernel["id"], protocol)
    req = ch.execute('print("hi")')
    res = ch.collect_execution(req)
    assert res.reply is not None and res.reply.msg_type == "execute_reply"
    assert res.reply.channel == "shell"
    assert res.status == "ok", res.reply.content
    assert res.stdout() == "hi\n", res.iopub
    assert res.states()[0] == "busy" and res.states()[-1] == "idle", res.states()
    inputs = res.of_type("execute_input")
    assert inputs and inputs[0].content["code"] == 'print("hi")'
    for m in res.iopub + [res.reply]:
        assert m.parent_header["msg_id"] == req.msg_id
        assert m.parent_header["session"] == ch.session_id
        assert {"msg_id", "msg_type", "session", "date", "version"} <= set(m.header), m.header
    assert_frames(ch, {"v1"} if protocol == V1 else {"text"})


def test_execute_result(gw, shared_kernel, protocol):
    ch = gw.open_channel(shared_kernel["id"], protocol)
    res = ch.run("6 * 7")
    assert res.status == "ok", res.reply.content
    results = res.of_type("execute_result")
    assert len(results) == 1, res.iopub
    assert results[0].content["data"]["text/plain"] == "42"
    assert results[0].content["execution_count"] == res.reply.content["execution_count"]


def test_execute_error(gw, shared_kernel, protocol):
    ch = gw.open_channel(shared_kernel["id"], protocol)
    res = ch.run("1/0", stop_on_error=False)
    assert res.status == "error", res.reply.content
    assert res.reply.content["ename"] == "ZeroDivisionError"
    errors = res.of_type("error")
    assert len(errors) == 1, res.iopub
    assert errors[0].content["ename"] == "ZeroDivisionError"
    assert isinstance(errors[0].content["traceback"], list) and errors[0].content["traceback"]
    # The kernel is still usable afterwards.
    after = ch.run("print('after')")
    assert after.status == "ok" and after.stdout() == "after\n", after


def test_stdin_input_round_trip(gw, shared_kernel, protocol):
    ch = gw.open_channel(shared_kernel["id"], protocol)
    prompts = []

    def answer(client, msg):
        assert msg.msg_type == "input_request", msg
        prompts.append(msg.content)
        client.send(client.new_msg("input_reply", {"value": "kg answer \u00e9"}, channel="stdin",
                                   parent_header=msg.header))

    req = ch.execute('v = input("q? ")\nprint("got", repr(v))', allow_stdin=True)
    res = ch.collect_execution(req, on_stdin=answer)
    assert prompts == [{"prompt": "q? ", "password": False}], prompts
    assert res.stdin and res.stdin[0].channel == "stdin"
    assert res.status == "ok", res.reply.content
    assert res.stdout() == "got 'kg answer \u00e9'\n", res.iopub


COMM_TARGET_CODE = '''
def _kg_echo_target(comm, open_msg):
    comm.send({"echo": "open", "data": open_msg["content"]["data"]},
              buffers=[bytes(b) for b in open_msg.get("buffers") or []])

    @comm.on_msg
    def _on_msg(msg):
        comm.send({"echo": "msg", "data": msg["content"]["data"]},
                  buffers=[bytes(b) for b in msg.get("buffers") or []])

get_ipython().kernel.comm_manager.register_target("kg_echo", _kg_echo_target)
'''


def test_comm_binary_buffers_round_trip(gw, shared_kernel, protocol):
    ch = gw.open_channel(shared_kernel["id"], protocol)
    assert ch.run(COMM_TARGET_CODE).status == "ok"
    comm_id = uuid.uuid4().hex
    all_bytes = bytes(range(256))
    second = bytes(range(255, -1, -1)) * 40 + b"\x00"
    ch.send(ch.new_msg("comm_open", {"comm_id": comm_id, "target_name": "kg_echo", "data": {"n": 1}},
                       buffers=[all_bytes, second]))

    def echo_of(kind):
        return lambda m: (m.channel == "iopub" and m.msg_type == "comm_msg"
                          and m.content.get("comm_id") == comm_id and m.content["data"].get("echo") == kind)

    echo = ch.wait_for(echo_of("open"), 15, "comm echo of comm_open")
    assert echo.content["data"]["data"] == {"n": 1}
    assert echo.buffers == [all_bytes, second], [len(b) for b in echo.buffers]
    assert echo.frame_kind == ("v1" if protocol == V1 else "legacy-binary")

    third = b"\xff\x00\r\n\x80" * 1000
    ch.send(ch.new_msg("comm_msg", {"comm_id": comm_id, "data": {"n": 2}}, buffers=[third, all_bytes]))
    echo = ch.wait_for(echo_of("msg"), 15, "comm echo of comm_msg")
    assert echo.content["data"]["data"] == {"n": 2}
    assert echo.buffers == [third, all_bytes], [len(b) for b in echo.buffers]

    # A text-only comm message still round-trips (no buffers: legacy uses a text frame).
    ch.send(ch.new_msg("comm_msg", {"comm_id": comm_id, "data": {"n": 3}}))
    echo = ch.wait_for(echo_of("msg"), 15, "comm echo without buffers")
    assert echo.content["data"]["data"] == {"n": 3} and echo.buffers == []
    ch.send(ch.new_msg("comm_close", {"comm_id": comm_id, "data": {}}))
    assert ch.run("print('ok')").stdout() == "ok\n"


def test_several_clients_all_get_iopub(gw, shared_kernel, protocol):
    others = (LEGACY, V1, LEGACY)
    main = gw.open_channel(shared_kernel["id"], protocol)
    peers = [gw.open_channel(shared_kernel["id"], p) for p in others]
    req = main.execute('print("fan-out")')
    res = main.collect_execution(req)
    assert res.stdout() == "fan-out\n"
    for peer in peers:
        got = peer.collect_execution(req, need_reply=False)
        assert got.stdout() == "fan-out\n", (peer.protocol, got.iopub)
        assert got.states()[-1] == "idle"
    # Shell replies go to the requesting connection only.
    for peer in peers:
        peer.kernel_info()
        leaked = [m for m in peer.history if m.parent_id == req.msg_id and m.channel == "shell"]
        assert not leaked, f"{peer.protocol} peer received another client's shell reply: {leaked}"


def test_token_in_query_string(gw, shared_kernel, protocol):
    ch = gw.open_channel(shared_kernel["id"], protocol, token_in_query=True)
    assert ch.run("print(1 + 1)").stdout() == "2\n"


def test_unknown_kernel_channel_is_rejected(gw):
    import websocket
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(gw.channel_url(str(uuid.uuid4()), uuid.uuid4().hex),
                                    header=[f"Authorization: token {gw.token}"], timeout=10)
    assert info.value.status_code == 404


# --------------------------------------------------------------------------------------
# kernel lifecycle seen from a connected client
# --------------------------------------------------------------------------------------

def test_interrupt_sleeping_cell(gw, kernel, protocol):
    ch = gw.open_channel(kernel["id"], protocol)
    req = ch.execute('import time\nprint("sleeping", flush=True)\ntime.sleep(30)', stop_on_error=False)
    ch.wait_for(lambda m: m.parent_id == req.msg_id and m.msg_type == "stream", 20, "the cell to start")
    t0 = time.monotonic()
    r = gw.post(f"/api/kernels/{kernel['id']}/interrupt", {})
    assert r.status_code == 204, (r.status_code, r.text[:300])
    res = ch.collect_execution(req, timeout=10)
    assert time.monotonic() - t0 < 10
    assert res.status == "error", res.reply.content
    assert res.reply.content["ename"] == "KeyboardInterrupt"
    assert [e.content["ename"] for e in res.of_type("error")] == ["KeyboardInterrupt"]
    after = ch.run("print('still here')")
    assert after.status == "ok" and after.stdout() == "still here\n", after


def test_restart_clears_state(gw, kernel, protocol):
    ch = gw.open_channel(kernel["id"], protocol)
    assert ch.run("kg_x = 42").status == "ok"
    res = ch.run("print(kg_x)")
    assert res.stdout() == "42\n", res
    old_pid = kernel_pid(ch)
    model = expect(gw.post(f"/api/kernels/{kernel['id']}/restart", {}), 200).json()
    assert model["id"] == kernel["id"]
    # The same WebSocket keeps working after the restart.
    if gw.is_reference:
        # Jupyter Server answers 200 before the connection's iopub has re-subscribed; a client
        # must nudge first or may lose the first cell's output. kernelgate must not need this.
        ch.nudge()
    res = ch.run("print(kg_x)", timeout=45, stop_on_error=False)
    assert_complete_iopub(res, "first request after POST /restart")
    assert res.status == "error", res.reply.content
    assert res.reply.content["ename"] == "NameError"
    assert kernel_pid(ch) != old_pid
    assert not pid_alive(old_pid) or poll_until(lambda: not pid_alive(old_pid), 10, "old kernel to exit")


def test_delete_kernel_closes_socket(gw, kernel, protocol):
    gw.reference_deviation("Jupyter Server 1.23 leaves the WebSocket open after DELETE")
    ch = gw.open_channel(kernel["id"], protocol)
    pid = kernel_pid(ch)
    r = gw.delete(f"/api/kernels/{kernel['id']}")
    assert r.status_code == 204, (r.status_code, r.text[:300])
    assert ch.wait_closed(15), f"socket still open after DELETE; got {ch.history[-5:]}"
    poll_until(lambda: not pid_alive(pid), 15, f"kernel process {pid} to exit")


def _kill_and_wait_restarting(ch) -> int:
    pid = kernel_pid(ch)
    os.kill(pid, signal.SIGKILL)
    ch.wait_for(lambda m: m.channel == "iopub" and m.msg_type == "status"
                and m.content.get("execution_state") == "restarting", 30, "iopub status restarting")
    return pid


def _first_request_after_restart(ch, code, seconds=20):
    """Send one request to a kernel that is coming back; it must get a reply, not silence.

    It may be served by the new kernel (queued meanwhile) or answered with an error reply; in
    the latter case one resend must then succeed.
    """
    req = ch.execute(code, stop_on_error=False)
    try:
        res = ch.collect_execution(req, timeout=seconds)
    except TimeoutError as e:
        got_reply = any(m.parent_id == req.msg_id and m.msg_type == "execute_reply" for m in ch.history)
        got_iopub = [m for m in ch.history if m.parent_id == req.msg_id and m.channel == "iopub"]
        if got_reply and not got_iopub:
            raise AssertionError(
                f"first request after the restart: execute_reply arrived but none of its iopub messages "
                f"(busy/stream/idle) within {seconds}s -- it was forwarded before the restarted kernel's "
                f"iopub was live, and its output is lost: {e}")
        raise AssertionError(f"first request after the restart: no complete answer within {seconds}s "
                             f"(reply seen: {got_reply}, iopub seen: {got_iopub}): {e}")
    if res.status != "ok":
        res = ch.run(code, timeout=seconds)
    assert_complete_iopub(res, "first request after an automatic restart")
    return res


def test_killed_kernel_is_restarted(gw, kernel, protocol):
    """Kill the kernel process: clients see `restarting`, then the kernel works under the same id.

    Like JupyterLab, the client reconnects (same session_id) after `restarting`.
    """
    kid = kernel["id"]
    session_id = uuid.uuid4().hex
    ch = gw.open_channel(kid, protocol, session_id=session_id)
    assert ch.run("kg_y = 1").status == "ok"
    pid = _kill_and_wait_restarting(ch)
    ch.close()
    ch2 = gw.open_channel(kid, protocol, session_id=session_id, handshake=False)
    res = _first_request_after_restart(ch2, "print('kg_y' in dir())")
    assert res.status == "ok", res.reply.content
    assert res.stdout() == "False\n", res.iopub
    assert kernel_pid(ch2) != pid
    assert not pid_alive(pid)
    assert gw.kernel_model(kid)["id"] == kid
    assert kid in [k["id"] for k in expect(gw.get("/api/kernels"), 200).json()]


def test_killed_kernel_same_socket_keeps_working(gw, kernel):
    """DESIGN.md: clients keep their WebSocket across a restart of the kernel under them."""
    gw.reference_deviation("Jupyter Server 1.23 restarts on new ports; old sockets must reconnect")
    ch = gw.open_channel(kernel["id"], V1)
    assert ch.run("kg_y = 1").status == "ok"
    pid = _kill_and_wait_restarting(ch)
    res = _first_request_after_restart(ch, "print('kg_y' in dir())")
    assert res.status == "ok", res.reply.content
    assert res.stdout() == "False\n", res.iopub
    assert kernel_pid(ch) != pid
    # The restarted kernel is still tied to this socket: shutting it down closes the socket.
    r = gw.delete(f"/api/kernels/{kernel['id']}", timeout=20)
    assert r.status_code == 204, (r.status_code, r.text[:300])
    assert ch.wait_closed(15), "socket still open after DELETE of an auto-restarted kernel"


def test_reconnect_replays_buffered_output(gw, kernel, protocol):
    kid = kernel["id"]
    session_id = uuid.uuid4().hex
    ch = gw.open_channel(kid, protocol, session_id=session_id)
    req = ch.execute('import time\nprint("before", flush=True)\ntime.sleep(2)\nprint("kg-late-output", flush=True)')
    ch.wait_for(lambda m: m.parent_id == req.msg_id and m.msg_type == "stream", 20, "the cell to start")
    ch.close()
    # The cell finishes while nobody is connected.
    gw.wait_execution_state(kid, "idle", timeout=20)
    ch2 = gw.open_channel(kid, protocol, session_id=session_id, handshake=False)
    late = ch2.wait_for(lambda m: m.parent_id == req.msg_id and m.msg_type == "stream"
                        and "kg-late-output" in m.content.get("text", ""), 20,
                        "replay of the output printed while disconnected")
    assert late.channel == "iopub"
    ch2.wait_for(lambda m: m.parent_id == req.msg_id and m.msg_type == "execute_reply", 10,
                 "replay of the execute_reply")
    assert ch2.kernel_info().reply is not None


def test_other_session_gets_no_replay(gw, kernel):
    kid = kernel["id"]
    ch = gw.open_channel(kid, LEGACY, session_id=uuid.uuid4().hex)
    req = ch.execute('import time\nprint("before", flush=True)\ntime.sleep(1)\nprint("kg-not-for-you", flush=True)')
    ch.wait_for(lambda m: m.parent_id == req.msg_id and m.msg_type == "stream", 20, "the cell to start")
    ch.close()
    gw.wait_execution_state(kid, "idle", timeout=20)
    other = gw.open_channel(kid, LEGACY, session_id=uuid.uuid4().hex)
    other.run("print('x')")
    leaked = [m for m in other.history if m.parent_id == req.msg_id]
    assert not leaked, f"another session received the buffered messages: {leaked}"


# --------------------------------------------------------------------------------------
# gateway shutdown
# --------------------------------------------------------------------------------------

def test_sigterm_shuts_down_gateway_and_kernels(gateway_factory):
    g = gateway_factory()
    k1 = g.start_kernel("python3")
    k2 = g.start_kernel("python3")
    pids = [kernel_pid(g.open_channel(k["id"], LEGACY)) for k in (k1, k2)]
    t0 = time.monotonic()
    rc = g.process.terminate(timeout=20)
    assert rc is not None, "the gateway did not exit within 20s of SIGTERM"
    assert rc == 0, f"exit code after SIGTERM: {rc}\nlog:\n{g.log_tail()}"
    for pid in pids:
        poll_until(lambda: not pid_alive(pid), max(1.0, 20 - (time.monotonic() - t0)),
                   f"kernel {pid} to be shut down with the gateway")


def _raw_request(port: int, head: str) -> "tuple[socket.socket, str]":
    """Sends one request's head on a fresh connection and reads the response head."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head.encode())
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        assert chunk, f"connection closed before a response head: {got!r}"
        got += chunk
    return s, got.decode("latin-1")


def test_second_sigterm_with_sessions_still_open(gateway_factory):
    """A second signal stops at once, with a kernel still shutting down, an idle keep-alive
    connection and a WebSocket whose client never answers the close still open: the process
    drops them and exits 0 (under the sanitizers: with nothing leaked, and without touching
    anything already destroyed)."""
    g = gateway_factory()
    k = g.start_kernel("python3")
    auth = f"Authorization: token {g.token}\r\n"
    idle, head = _raw_request(g.port, f"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    mute, head = _raw_request(
        g.port,
        f"GET /api/kernels/{k['id']}/channels?session_id={uuid.uuid4().hex} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{auth}\r\n")
    assert head.startswith("HTTP/1.1 101"), head
    try:
        g.process.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)  # inside the graceful shutdown: the kernel is still shutting down
        assert g.process.proc.poll() is None, "exited before the second signal; nothing was tested"
        g.process.proc.send_signal(signal.SIGTERM)
        rc = g.process.proc.wait(timeout=20)
        assert rc == 0, f"exit code after a second SIGTERM: {rc}\nlog:\n{g.log_tail()}"
        assert "Sanitizer" not in g.log_tail(20000), g.log_tail(20000)
    finally:
        idle.close()
        mute.close()
