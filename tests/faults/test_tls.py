# SPDX-License-Identifier: BSD-3-Clause
"""TLS and mutual TLS with real clients (requests, websocket-client) and a certificate
authority made in the test with the openssl command line."""
from __future__ import annotations

import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from test_faults import FaultGateway, upgrade_with_early_frames  # noqa: F401
from kg_client import LEGACY, ChannelClient, Deadline, make_msg  # noqa: E402


def _openssl(*args, cwd: Path):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "1", "-subj", "/CN=kernelgate-test-ca", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subj, ext in (("srv", "/CN=127.0.0.1", True), ("cli", "/CN=test-client", False)):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", subj, cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
                 *(["-extfile", "ext"] if ext else []), cwd=d)
    # A client certificate from a CA the gateway does not trust.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
             "rogue.pem", "-days", "1", "-subj", "/CN=rogue", cwd=d)
    return d


class TlsGateway(FaultGateway):
    """FaultGateway over https: REST through requests with our CA, WebSockets over wss."""

    def request(self, method, path, auth=True, headers=None, **kw):
        kw.setdefault("verify", str(self.pki / "ca.pem"))
        if self.client_cert:
            kw.setdefault("cert", self.client_cert)
        h = dict(self.auth_headers() if auth else {})
        h.update(headers or {})
        kw.setdefault("timeout", 30)
        url = f"https://127.0.0.1:{self.port}{path}"
        return self.http.request(method, url, headers=h, **kw)

    def wss(self, kernel_id: str) -> websocket.WebSocket:
        sslopt = {"ca_certs": str(self.pki / "ca.pem"), "cert_reqs": ssl.CERT_REQUIRED}
        if self.client_cert:
            sslopt["certfile"], sslopt["keyfile"] = self.client_cert
        return websocket.create_connection(
            f"wss://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels",
            header=[f"Authorization: token {self.token}"], sslopt=sslopt, timeout=20)


def test_https_and_wss_with_a_self_signed_ca(tmp_path, pki):
    g = TlsGateway.__new__(TlsGateway)  # launched by _start_tls (https readiness probe)
    g.pki, g.client_cert = pki, None
    _start_tls(g, tmp_path, [])
    try:
        me = g.get("/api/me")
        assert me.status_code == 200 and me.json()["role"] == "admin"
        kid = g.post("/api/kernels", json={"name": "echo"}).json()["id"]
        ws = g.wss(kid)
        msg_id = uuid.uuid4().hex
        ws.send('{"channel":"shell","header":{"msg_id":"%s","msg_type":"execute_request",'
                '"session":"s","username":"u","version":"5.3"},"parent_header":{},'
                '"metadata":{},"content":{"code":"over-tls","silent":false}}' % msg_id)
        seen = ""
        while not ('"execute_reply"' in seen and "over-tls" in seen):
            seen += ws.recv()  # the socket's 20 s timeout bounds the wait
        ws.close()
        # Frames sent in the same TLS records as the upgrade request reach the kernel too.
        ctx = ssl.create_default_context(cafile=str(g.pki / "ca.pem"))
        with socket.create_connection(("127.0.0.1", g.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            status, replies = upgrade_with_early_frames(s, f"127.0.0.1:{g.port}", g.token, kid,
                                                        LEGACY)
        assert status.startswith("HTTP/1.1 101"), status
        assert set(replies) == {"kernel_info_request", "execute_request"}, replies
        # Plain HTTP to the TLS port gets no answer, and certificates are checked by clients.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{g.port}/api/health", timeout=5)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://127.0.0.1:{g.port}/api/health", timeout=5)  # unknown CA
    finally:
        g.process.stop()


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(tmp_path, pki):
    g = TlsGateway.__new__(TlsGateway)
    g.pki, g.client_cert = pki, (str(pki / "cli.pem"), str(pki / "cli.key"))
    _start_tls(g, tmp_path, ["--client-ca", str(pki / "ca.pem")])
    try:
        assert g.get("/api/me").status_code == 200  # with the client certificate
        url = f"https://127.0.0.1:{g.port}/api/health"
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=str(pki / "ca.pem"), timeout=5)  # no certificate
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=str(pki / "ca.pem"), timeout=5,
                         cert=(str(pki / "rogue.pem"), str(pki / "rogue.key")))
        kid = g.post("/api/kernels", json={"name": "echo"}).json()["id"]
        g.wss(kid).close()  # wss with the certificate works
        with pytest.raises(Exception):
            websocket.create_connection(
                f"wss://127.0.0.1:{g.port}/api/kernels/{kid}/channels",
                header=[f"Authorization: token {g.token}"],
                sslopt={"ca_certs": str(pki / "ca.pem")}, timeout=10)
        assert g.process.proc.poll() is None
    finally:
        g.process.stop()


def _start_tls(g, tmp: Path, extra):
    """Start kernelgate with TLS flags and wait for https readiness."""
    import json as _json
    import secrets
    from conftest import ManagedProcess, clean_child_env, free_port, kernelgate_binary
    from test_faults import ECHO
    from kg_client import RestClient

    g.tmp = tmp
    g.token = secrets.token_hex(16)
    g.port = free_port()
    specs = tmp / "kernels" / "echo"
    specs.mkdir(parents=True)
    (specs / "kernel.json").write_text(_json.dumps(
        {"argv": [ECHO, "-f", "{connection_file}"], "display_name": "echo", "language": "echo"}))
    RestClient.__init__(g, f"https://127.0.0.1:{g.port}", g.token)
    marker = uuid.uuid4().hex
    argv = [kernelgate_binary(), "serve", "--ip", "127.0.0.1", "--port", str(g.port),
            "--data-dir", str(tmp / "data"), "--auth-token", g.token,
            "--kernel-dir", str(tmp / "kernels"), "--certfile", str(g.pki / "srv.pem"),
            "--keyfile", str(g.pki / "srv.key"), *extra]
    g.process = ManagedProcess("kernelgate-tls", argv, clean_child_env(tmp, marker), tmp,
                               tmp / "gateway.log", marker)

    def probe():
        r = g.get("/api", timeout=2)
        return r.status_code == 200, f"GET /api -> {r.status_code}"
    g.process.wait_ready(probe, 30)


def test_keepalive_and_close_deadlines_over_tls(tmp_path, pki):
    # The deadlines close the TCP connection under the TLS stream: the silent client is
    # dropped, the one that never answers a close is cut, and the gateway stays up.
    g = TlsGateway.__new__(TlsGateway)
    g.pki, g.client_cert = pki, None
    _start_tls(g, tmp_path, ["--ws-ping-interval", "1"])
    try:
        kid = g.post("/api/kernels", json={"name": "echo"}).json()["id"]
        silent = g.wss(kid)  # never reads, so never answers a ping
        deadline = Deadline(15, "the silent TLS client to be dropped")
        while g.get("/api/health").json()["websockets"] > 0:
            time.sleep(0.2)
            deadline.check()
        assert g.metric("kernelgate_ws_closed_silent_total") == 1
        mute = g.wss(kid)
        mute.send("this is not json")  # the gateway closes (1007); no answer ever comes
        deadline = Deadline(20, "the unanswered TLS close to be cut")
        while g.metric("kernelgate_ws_close_deadline_total") == 0:
            time.sleep(0.2)
            deadline.check()
        deadline = Deadline(10, "the session to be released")
        while g.get("/api/health").json()["websockets"] > 0:
            time.sleep(0.1)
            deadline.check()
        assert g.process.proc.poll() is None
        for ws in (silent, mute):
            ws.sock.close()
    finally:
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"


def test_jupyter_server_with_an_https_gateway_url(tmp_path, pki):
    # The client most users put in front: Jupyter Server 1.23 with --gateway-url=https://…,
    # its REST calls and its WebSocket (tornado's TLS client) through the gateway's TLS
    # layer, a stream of output of several records per burst included. Jupyter Server 1.23
    # passes --GatewayClient.ca_certs to its REST calls only with a client certificate, so
    # the CA is given through SSL_CERT_FILE as well (the README says so).
    import secrets
    from conftest import SYSTEM_PYTHON, ManagedProcess, clean_child_env, free_port
    from kg_client import RestClient, expect

    g = TlsGateway.__new__(TlsGateway)
    g.pki, g.client_cert = pki, None
    _start_tls(g, tmp_path / "gw", [])
    front = None
    try:
        port = free_port()
        front = RestClient(f"http://127.0.0.1:{port}", secrets.token_hex(16))
        marker = uuid.uuid4().hex
        fe_tmp = tmp_path / "front"
        (fe_tmp / "root").mkdir(parents=True)
        env = clean_child_env(fe_tmp, marker)
        env["SSL_CERT_FILE"] = str(pki / "ca.pem")
        argv = [SYSTEM_PYTHON, "-m", "jupyter_server", "--no-browser", "--allow-root",
                f"--ServerApp.token={front.token}", f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.root_dir={fe_tmp / 'root'}",
                f"--gateway-url=https://127.0.0.1:{g.port}", f"--GatewayClient.auth_token={g.token}",
                f"--GatewayClient.ca_certs={pki / 'ca.pem'}",
                "--GatewayClient.request_timeout=60", "--GatewayClient.connect_timeout=20"]
        proc = ManagedProcess("jupyter_server --gateway-url https", argv, env, fe_tmp,
                              fe_tmp / "front.log", marker)

        def probe():
            r = front.get("/api/kernelspecs", timeout=5)
            return r.status_code == 200, f"GET /api/kernelspecs -> {r.status_code}"
        try:
            proc.wait_ready(probe, 60)
            specs = expect(front.get("/api/kernelspecs"), 200).json()
            assert "echo" in specs["kernelspecs"], specs
            kid = expect(front.post("/api/kernels", {"name": "echo"}), 201).json()["id"]
            assert kid in [k["id"] for k in expect(g.get("/api/kernels"), 200).json()]
            sid = uuid.uuid4().hex
            ch = ChannelClient(front.ws_url(f"/api/kernels/{kid}/channels?session_id={sid}"),
                               [f"Authorization: token {front.token}"], LEGACY, sid)
            try:
                ch.nudge(timeout=45)
                res = ch.run("stream:1048576", timeout=60)  # 16 messages of 64 KiB
                assert res.status == "ok", res
                assert len(res.stdout()) == 1048576, len(res.stdout())
                res = ch.run("over https", timeout=30)
                assert res.status == "ok", res
            finally:
                ch.close()
            expect(front.delete(f"/api/kernels/{kid}"), 204)
            assert kid not in [k["id"] for k in expect(g.get("/api/kernels"), 200).json()]
        finally:
            proc.stop()
        assert g.process.proc.poll() is None
    finally:
        rc = g.process.stop()
    assert rc == 0, f"exit code {rc}:\n{g.log_tail()}"
