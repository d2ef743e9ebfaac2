# SPDX-License-Identifier: BSD-3-Clause
"""Small client-side helpers for the integration tests.

Everything a test needs to talk to a Jupyter kernel gateway over HTTP and WebSocket:
message construction, the three WebSocket frame formats (legacy JSON text, legacy binary,
``v1.kernel.websocket.jupyter.org``) written from the wire description in
shared/ANCHORS.md section b.4, and a channel client with deadline-bounded receive loops.

Nothing in here sleeps for a fixed time: every wait is a poll bounded by a deadline.
"""
from __future__ import annotations

import datetime
import http.cookiejar
import json
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional

import requests
import websocket

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
LEGACY = "legacy"
V1 = "v1"
PROTOCOLS = (LEGACY, V1)
CHANNELS = ("shell", "iopub", "stdin", "control")
LAST_ACTIVITY_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


class Deadline:
    """A point in time after which a wait has failed."""

    def __init__(self, seconds: float, what: str = "operation"):
        self.seconds = seconds
        self.what = what
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self, detail: str = "") -> None:
        if self.expired():
            raise TimeoutError(f"timed out after {self.seconds:.1f}s waiting for {self.what}"
                               + (f": {detail}" if detail else ""))


def poll_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05, detail: Callable[[], str] = lambda: "") -> Any:
    """Call predicate until it returns something truthy; fail after timeout seconds."""
    deadline = Deadline(timeout, what)
    while True:
        value = predicate()
        if value:
            return value
        if deadline.expired():
            deadline.check(detail())
        time.sleep(min(interval, max(deadline.remaining(), 0.001)))


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------

def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Message:
    channel: Optional[str]
    header: dict
    parent_header: dict
    metadata: dict
    content: dict
    buffers: List[bytes] = field(default_factory=list)
    # How the message arrived: "text", "legacy-binary" or "v1"; None for outgoing ones.
    frame_kind: Optional[str] = None

    @property
    def msg_type(self) -> str:
        return self.header.get("msg_type", "")

    @property
    def msg_id(self) -> str:
        return self.header.get("msg_id", "")

    @property
    def parent_id(self) -> Optional[str]:
        return (self.parent_header or {}).get("msg_id")

    def __repr__(self) -> str:  # compact, for assertion messages
        content = json.dumps(self.content, default=str)
        if len(content) > 300:
            content = content[:300] + "..."
        return (f"<{self.channel}:{self.msg_type} parent={self.parent_id} frame={self.frame_kind} "
                f"bufs={[len(b) for b in self.buffers]} content={content}>")


def make_msg(msg_type: str, content: Optional[dict] = None, channel: str = "shell",
             session: Optional[str] = None, buffers: Iterable[bytes] = (),
             metadata: Optional[dict] = None, parent_header: Optional[dict] = None) -> Message:
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "kgtest",
        "session": session or uuid.uuid4().hex,
        "date": _now_iso(),
        "version": "5.3",
    }
    return Message(channel=channel, header=header, parent_header=parent_header or {},
                   metadata=metadata or {}, content=content or {},
                   buffers=[bytes(b) for b in buffers])


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode("utf-8")


# --------------------------------------------------------------------------------------
# Frame codecs (shared/ANCHORS.md b.4)
# --------------------------------------------------------------------------------------

class FrameError(AssertionError):
    """A frame that does not follow the wire format."""


def encode_legacy_text(msg: Message) -> str:
    assert not msg.buffers, "messages with buffers must use the legacy binary frame"
    return json.dumps({
        "channel": msg.channel,
        "header": msg.header,
        "parent_header": msg.parent_header,
        "metadata": msg.metadata,
        "content": msg.content,
        "buffers": [],
    })


def encode_legacy_binary(msg: Message) -> bytes:
    """uint32 BE nbufs (=1+len(buffers)), nbufs uint32 BE offsets, JSON, raw buffers."""
    body = _dumps({
        "channel": msg.channel,
        "header": msg.header,
        "parent_header": msg.parent_header,
        "metadata": msg.metadata,
        "content": msg.content,
    })
    parts = [body] + [bytes(b) for b in msg.buffers]
    nbufs = len(parts)
    offsets = []
    pos = 4 + 4 * nbufs
    for part in parts:
        offsets.append(pos)
        pos += len(part)
    return struct.pack(f">I{nbufs}I", nbufs, *offsets) + b"".join(parts)


def _legacy_dict_to_message(d: dict, buffers: List[bytes], frame_kind: str) -> Message:
    if not isinstance(d, dict):
        raise FrameError(f"legacy frame is not a JSON object: {d!r}")
    for key in ("header", "parent_header", "content"):
        if key not in d:
            raise FrameError(f"legacy frame lacks {key!r}: {sorted(d)}")
    return Message(channel=d.get("channel"), header=d["header"], parent_header=d["parent_header"] or {},
                   metadata=d.get("metadata") or {}, content=d["content"], buffers=buffers,
                   frame_kind=frame_kind)


def decode_legacy_text(data: str) -> Message:
    d = json.loads(data)
    bufs = d.get("buffers") or []
    if bufs:
        raise FrameError(f"legacy text frame carries {len(bufs)} inline buffers")
    return _legacy_dict_to_message(d, [], "text")


def decode_legacy_binary(data: bytes) -> Message:
    if len(data) < 8:
        raise FrameError(f"legacy binary frame too short ({len(data)} bytes)")
    (nbufs,) = struct.unpack_from(">I", data, 0)
    if nbufs < 1 or 4 + 4 * nbufs > len(data):
        raise FrameError(f"legacy binary frame: bad nbufs {nbufs} for {len(data)} bytes")
    offsets = list(struct.unpack_from(f">{nbufs}I", data, 4))
    if offsets[0] != 4 + 4 * nbufs:
        raise FrameError(f"legacy binary frame: first offset {offsets[0]} != {4 + 4 * nbufs}")
    bounds = offsets + [len(data)]
    for a, b in zip(bounds, bounds[1:]):
        if a > b:
            raise FrameError(f"legacy binary frame: offsets not monotonic: {offsets} len={len(data)}")
    parts = [data[bounds[i]:bounds[i + 1]] for i in range(nbufs)]
    d = json.loads(parts[0].decode("utf-8"))
    return _legacy_dict_to_message(d, [bytes(p) for p in parts[1:]], "legacy-binary")


def encode_v1(msg: Message) -> bytes:
    """u64 LE offset_number (= parts + 2), offset_number u64 LE offsets, channel, parts."""
    parts = [_dumps(msg.header), _dumps(msg.parent_header), _dumps(msg.metadata),
             _dumps(msg.content)] + [bytes(b) for b in msg.buffers]
    channel = (msg.channel or "shell").encode("utf-8")
    offset_number = len(parts) + 2
    offsets = [8 * (offset_number + 1)]
    offsets.append(offsets[0] + len(channel))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    assert len(offsets) == offset_number
    return struct.pack(f"<{offset_number + 1}Q", offset_number, *offsets) + channel + b"".join(parts)


def decode_v1(data: bytes) -> Message:
    if len(data) < 8:
        raise FrameError(f"v1 frame too short ({len(data)} bytes)")
    (offset_number,) = struct.unpack_from("<Q", data, 0)
    if offset_number < 6 or 8 * (offset_number + 1) > len(data):
        raise FrameError(f"v1 frame: bad offset_number {offset_number} for {len(data)} bytes")
    offsets = list(struct.unpack_from(f"<{offset_number}Q", data, 8))
    if offsets[0] != 8 * (offset_number + 1):
        raise FrameError(f"v1 frame: offset[0]={offsets[0]} != 8*(offset_number+1)={8 * (offset_number + 1)}")
    if offsets[-1] != len(data):
        raise FrameError(f"v1 frame: last offset {offsets[-1]} != frame length {len(data)}")
    for a, b in zip(offsets, offsets[1:]):
        if a > b:
            raise FrameError(f"v1 frame: offsets not monotonic: {offsets}")
    channel = data[offsets[0]:offsets[1]].decode("utf-8")
    parts = [data[offsets[i]:offsets[i + 1]] for i in range(1, offset_number - 1)]
    if len(parts) < 4:
        raise FrameError(f"v1 frame has {len(parts)} parts, need at least 4")
    try:
        header, parent, metadata, content = (json.loads(p.decode("utf-8")) if p else {} for p in parts[:4])
    except ValueError as e:
        raise FrameError(f"v1 frame: a JSON part does not parse: {e}; parts={[p[:80] for p in parts[:4]]}")
    return Message(channel=channel, header=header, parent_header=parent or {}, metadata=metadata or {},
                   content=content, buffers=[bytes(p) for p in parts[4:]], frame_kind="v1")


# --------------------------------------------------------------------------------------
# Channel client
# --------------------------------------------------------------------------------------

@dataclass
class ExecResult:
    msg_id: str
    reply: Optional[Message]
    iopub: List[Message]
    stdin: List[Message]

    @property
    def status(self) -> Optional[str]:
        return self.reply.content.get("status") if self.reply else None

    def of_type(self, msg_type: str) -> List[Message]:
        return [m for m in self.iopub if m.msg_type == msg_type]

    def stdout(self) -> str:
        return "".join(m.content.get("text", "") for m in self.iopub
                       if m.msg_type == "stream" and m.content.get("name") == "stdout")

    def stderr(self) -> str:
        return "".join(m.content.get("text", "") for m in self.iopub
                       if m.msg_type == "stream" and m.content.get("name") == "stderr")

    def __repr__(self) -> str:
        return (f"<ExecResult {self.msg_id} status={self.status} "
                f"reply={self.reply.content if self.reply else None} iopub={self.iopub}>")

    def states(self) -> List[str]:
        return [m.content.get("execution_state") for m in self.iopub if m.msg_type == "status"]


class ChannelClient:
    """One WebSocket connection to /api/kernels/{id}/channels."""

    def __init__(self, ws_url: str, headers: List[str], protocol: str, session_id: Optional[str],
                 connect_timeout: float = 30.0):
        assert protocol in PROTOCOLS, protocol
        self.protocol = protocol
        self.session_id = session_id or uuid.uuid4().hex
        self.url = ws_url
        self.history: List[Message] = []   # everything received, in order
        self._pending: List[Message] = []  # received but not yet consumed by a wait
        self.closed_by_peer = False
        self.close_frame: Optional[bytes] = None  # payload of the server's close frame, if any
        options = {"header": headers, "timeout": connect_timeout}
        if protocol == V1:
            options["subprotocols"] = [V1_PROTOCOL]
        self.ws = websocket.create_connection(ws_url, **options)
        negotiated = self.ws.getsubprotocol()
        if protocol == V1:
            assert negotiated == V1_PROTOCOL, f"server did not select {V1_PROTOCOL}: {negotiated!r}"
        else:
            assert not negotiated, f"server selected subprotocol {negotiated!r} although none was offered"

    # -- sending -----------------------------------------------------------------------
    def new_msg(self, msg_type: str, content: Optional[dict] = None, channel: str = "shell",
                buffers: Iterable[bytes] = (), parent_header: Optional[dict] = None) -> Message:
        return make_msg(msg_type, content, channel=channel, session=self.session_id, buffers=buffers,
                        parent_header=parent_header)

    def send(self, msg: Message) -> Message:
        if self.protocol == V1:
            self.ws.send_binary(encode_v1(msg))
        elif msg.buffers:
            self.ws.send_binary(encode_legacy_binary(msg))
        else:
            self.ws.send(encode_legacy_text(msg))
        return msg

    def execute(self, code: str, allow_stdin: bool = False, silent: bool = False,
                store_history: bool = True, stop_on_error: bool = True) -> Message:
        # Note: with stop_on_error, ipykernel answers requests that arrive right after a failed
        # cell with status "aborted"; cells expected to fail should pass stop_on_error=False.
        return self.send(self.new_msg("execute_request", {
            "code": code, "silent": silent, "store_history": store_history,
            "user_expressions": {}, "allow_stdin": allow_stdin, "stop_on_error": stop_on_error,
        }))

    # -- receiving ---------------------------------------------------------------------
    def _decode(self, opcode: int, data: Any) -> Message:
        if self.protocol == V1:
            if opcode != websocket.ABNF.OPCODE_BINARY:
                raise FrameError(f"v1 connection received a non-binary frame (opcode {opcode}): {data[:200]!r}")
            return decode_v1(bytes(data))
        if opcode == websocket.ABNF.OPCODE_TEXT:
            text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
            return decode_legacy_text(text)
        if opcode == websocket.ABNF.OPCODE_BINARY:
            return decode_legacy_binary(bytes(data))
        raise FrameError(f"unexpected opcode {opcode}")

    def recv(self, timeout: float) -> Optional[Message]:
        """Next message, or None if none arrived within timeout. Raises ConnectionError on close."""
        if self._pending:
            return self._pending.pop(0)
        return self._recv_wire(timeout)

    def _recv_wire(self, timeout: float) -> Optional[Message]:
        if self.closed_by_peer:
            raise ConnectionError("websocket closed by the server")
        self.ws.settimeout(max(timeout, 0.001))
        try:
            # control_frame=True: return on ping/pong too (websocket-client answers pings itself),
            # so that a ping can never stretch a wait past its deadline.
            opcode, data = self.ws.recv_data(control_frame=True)
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as e:
            self.closed_by_peer = True
            raise ConnectionError(f"websocket closed: {e!r}")
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.closed_by_peer = True
            self.close_frame = bytes(data or b"")
            raise ConnectionError("websocket closed by the server (close frame)")
        if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
            return None
        msg = self._decode(opcode, data)
        self.history.append(msg)
        return msg

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float, what: str) -> Message:
        """Return the first pending/incoming message matching predicate; others stay pending."""
        for i, m in enumerate(self._pending):
            if predicate(m):
                return self._pending.pop(i)
        deadline = Deadline(timeout, what)
        while True:
            rem = deadline.remaining()
            if rem <= 0:
                deadline.check(f"last messages: {self.history[-8:]}")
            m = self._recv_wire(rem)
            if m is None:
                continue
            if predicate(m):
                return m
            self._pending.append(m)

    def drain_pending(self) -> List[Message]:
        out, self._pending = self._pending, []
        return out

    def wait_closed(self, timeout: float) -> bool:
        """True once the server closes the socket; False if still open after timeout."""
        deadline = Deadline(timeout, "websocket close")
        while not deadline.expired():
            try:
                m = self._recv_wire(deadline.remaining())
            except ConnectionError:
                return True
            if m is not None:
                self._pending.append(m)
        return False

    def collect_execution(self, request: Message, timeout: float = 20.0,
                          on_stdin: Optional[Callable[["ChannelClient", Message], None]] = None,
                          need_reply: bool = True) -> ExecResult:
        """Gather shell reply and iopub messages of one request until its reply and iopub idle."""
        msg_id = request.msg_id
        deadline = Deadline(timeout, f"{request.msg_type} {msg_id} to finish (reply + iopub idle)")
        reply = None
        iopub: List[Message] = []
        stdin: List[Message] = []
        idle = False
        kept: List[Message] = []
        queue = self.drain_pending()
        while not (idle and (reply is not None or not need_reply)):
            if queue:
                m = queue.pop(0)
            else:
                rem = deadline.remaining()
                if rem <= 0:
                    self._pending = kept + self._pending
                    deadline.check(f"reply={reply!r} iopub={iopub[-6:]!r} other={kept[-4:]!r}")
                m = self._recv_wire(rem)
                if m is None:
                    continue
            if m.parent_id != msg_id:
                kept.append(m)
                continue
            if m.channel == "iopub":
                iopub.append(m)
                if m.msg_type == "status" and m.content.get("execution_state") == "idle":
                    idle = True
            elif m.channel in ("shell", "control") and m.msg_type.endswith("_reply"):
                reply = m
            elif m.channel == "stdin":
                stdin.append(m)
                if on_stdin is not None:
                    on_stdin(self, m)
            else:
                kept.append(m)
        self._pending = kept + self._pending
        return ExecResult(msg_id=msg_id, reply=reply, iopub=iopub, stdin=stdin)

    def run(self, code: str, timeout: float = 20.0, **kw) -> ExecResult:
        on_stdin = kw.pop("on_stdin", None)
        return self.collect_execution(self.execute(code, **kw), timeout=timeout, on_stdin=on_stdin)

    def kernel_info(self, timeout: float = 30.0) -> ExecResult:
        return self.collect_execution(self.send(self.new_msg("kernel_info_request")), timeout=timeout)

    def nudge(self, timeout: float = 30.0, interval: float = 0.5) -> None:
        """Send kernel_info_request every `interval` until one gets both its reply and iopub idle.

        The way Jupyter Server makes sure a (re)started kernel's iopub reaches the client.
        """
        deadline = Deadline(timeout, "a kernel_info round trip with iopub (nudge)")
        sent = set()
        replied, idle = set(), set()
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= next_send:
                sent.add(self.send(self.new_msg("kernel_info_request")).msg_id)
                next_send = now + interval
            m = self._recv_wire(max(min(next_send - time.monotonic(), deadline.remaining()), 0.001))
            if m is not None:
                if m.parent_id in sent:
                    if m.msg_type == "kernel_info_reply":
                        replied.add(m.parent_id)
                    elif m.msg_type == "status" and m.content.get("execution_state") == "idle":
                        idle.add(m.parent_id)
                    if replied & idle:
                        return
                else:
                    self._pending.append(m)
            deadline.check(f"last messages: {self.history[-6:]}")

    def close(self) -> None:
        try:
            self.ws.close(timeout=2)
        except Exception:
            pass


# --------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------

class RestClient:
    """requests wrapper bound to a base URL and a token (sent as `Authorization: token T`)."""

    def __init__(self, base_url: str, token: Optional[str], timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = requests.Session()
        # Never replay cookies: a server that sets a login cookie after one good request must
        # not make later token-less requests look authenticated.
        self.http.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def auth_headers(self) -> dict:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def request(self, method: str, path: str, auth: bool = True, headers: Optional[dict] = None,
                **kw) -> requests.Response:
        h = dict(self.auth_headers() if auth else {})
        h.update(headers or {})
        kw.setdefault("timeout", self.timeout)
        kw.setdefault("allow_redirects", False)
        return self.http.request(method, self.base_url + path, headers=h, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json_body: Any = None, **kw) -> requests.Response:
        if json_body is not None:
            kw["json"] = json_body
        return self.request("POST", path, **kw)

    def patch(self, path: str, json_body: Any = None, **kw) -> requests.Response:
        if json_body is not None:
            kw["json"] = json_body
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def ws_url(self, path: str) -> str:
        return "ws" + self.base_url[len("http"):] + path


def expect(resp: requests.Response, status: int) -> requests.Response:
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.request.url} -> {resp.status_code}, expected {status}; "
        f"body: {resp.text[:800]!r}")
    return resp
