# SPDX-License-Identifier: BSD-3-Clause
"""The gateway's primary consumers: Jupyter Server 1.23 and classic Notebook 6.4.12 started with
--gateway-url pointing at the gateway under test. Everything is driven through THEIR API (REST and
their /api/kernels/{id}/channels WebSocket, which they proxy to the gateway with legacy frames)."""
from __future__ import annotations

import re
import secrets
import time
import uuid

import pytest

from conftest import SYSTEM_PYTHON, ManagedProcess, clean_child_env, free_port, launch_gateway
from kg_client import LEGACY, ChannelClient, RestClient, expect, poll_until

FRONTENDS = ("jupyter_server", "notebook")


class Frontend(RestClient):
    """A Jupyter Server or Notebook process using the gateway under test for its kernels."""

    def __init__(self, kind: str, gw, tmp):
        self.kind = kind
        self.gw = gw
        port = free_port()
        super().__init__(f"http://127.0.0.1:{port}", secrets.token_hex(16))
        root = tmp / "root"
        root.mkdir(parents=True, exist_ok=True)
        marker = uuid.uuid4().hex
        env = clean_child_env(tmp, marker)
        app = "ServerApp" if kind == "jupyter_server" else "NotebookApp"
        root_opt = "root_dir" if kind == "jupyter_server" else "notebook_dir"
        argv = [SYSTEM_PYTHON, "-m", kind, "--no-browser", "--allow-root",
                f"--{app}.token={self.token}", f"--{app}.port={port}", f"--{app}.port_retries=0",
                f"--{app}.ip=127.0.0.1", f"--{app}.{root_opt}={root}",
                f"--gateway-url={gw.base_url}", f"--GatewayClient.auth_token={gw.token}",
                "--GatewayClient.request_timeout=60", "--GatewayClient.connect_timeout=20"]
        self.process = ManagedProcess(f"{kind} --gateway-url", argv, env, tmp, tmp / f"{kind}.log", marker)
        self.kernels = []
        self.channels = []

        def probe():
            r = self.get("/api/kernelspecs", timeout=5)
            return r.status_code == 200, f"GET /api/kernelspecs -> {r.status_code}"
        self.process.wait_ready(probe, 60)

    def log_tail(self, chars: int = 6000) -> str:
        return self.process.log_tail(chars)

    def start_kernel(self) -> str:
        model = expect(self.post("/api/kernels", {"name": "python3"}), 201).json()
        self.kernels.append(model["id"])
        return model["id"]

    def open_channel(self, kernel_id: str) -> ChannelClient:
        # Like a browser talking to the server: legacy frames (these versions do not proxy v1).
        sid = uuid.uuid4().hex
        ch = ChannelClient(self.ws_url(f"/api/kernels/{kernel_id}/channels?session_id={sid}"),
                           [f"Authorization: token {self.token}"], LEGACY, sid)
        self.channels.append(ch)
        # The proxy opens its upstream socket after ours is open; wait for a full round trip.
        ch.nudge(timeout=45)
        return ch

    def cleanup(self) -> None:
        for ch in self.channels:
            ch.close()
        self.channels.clear()
        for kid in self.kernels:
            try:
                self.delete(f"/api/kernels/{kid}", timeout=30)
            except Exception:
                pass
            try:
                self.gw.delete(f"/api/kernels/{kid}", timeout=30)
            except Exception:
                pass
        self.kernels.clear()

    def stop(self) -> None:
        self.cleanup()
        self.process.stop()


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend(request, gw, tmp_path_factory):
    fe = Frontend(request.param, gw, tmp_path_factory.mktemp(request.param))
    yield fe
    fe.stop()


@pytest.fixture(autouse=True)
def _cleanup_frontend(request):
    yield
    if "frontend" in request.fixturenames:
        request.getfixturevalue("frontend").cleanup()


def gateway_kernel_ids(gw):
    return [k["id"] for k in expect(gw.get("/api/kernels"), 200).json()]


def test_kernelspecs_come_from_the_gateway(frontend, gw):
    theirs = expect(frontend.get("/api/kernelspecs"), 200).json()
    ours = expect(gw.get("/api/kernelspecs"), 200).json()
    assert theirs["default"] == ours["default"]
    assert set(theirs["kernelspecs"]) == set(ours["kernelspecs"])
    assert theirs["kernelspecs"]["python3"]["spec"]["display_name"] == \
        ours["kernelspecs"]["python3"]["spec"]["display_name"]
    # The frontend rewrites resource URLs to itself and fetches them from the gateway.
    logo = theirs["kernelspecs"]["python3"].get("resources", {}).get("logo-64x64")
    if logo:
        r = expect(frontend.get(logo[logo.index("/kernelspecs/"):]), 200)
        assert r.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_start_kernel_and_run_cell(frontend, gw):
    kid = frontend.start_kernel()
    assert kid in gateway_kernel_ids(gw), "kernel started through the frontend is not on the gateway"
    model = expect(frontend.get(f"/api/kernels/{kid}"), 200).json()
    assert model["id"] == kid and model["name"] == "python3"
    assert kid in [k["id"] for k in expect(frontend.get("/api/kernels"), 200).json()]
    ch = frontend.open_channel(kid)
    res = ch.run('print("through the proxy")\n6 * 7')
    assert res.status == "ok", res
    assert res.stdout() == "through the proxy\n", res
    assert [m.content["data"]["text/plain"] for m in res.of_type("execute_result")] == ["42"]
    res = ch.run("1/0", stop_on_error=False)
    assert res.status == "error" and res.reply.content["ename"] == "ZeroDivisionError", res
    # The gateway sees the frontend's connection.
    poll_until(lambda: gw.kernel_model(kid)["connections"] >= 1, 10, "gateway to count the proxied connection")


def test_interrupt_sleeping_cell(frontend):
    kid = frontend.start_kernel()
    ch = frontend.open_channel(kid)
    req = ch.execute('import time\nprint("sleeping", flush=True)\ntime.sleep(30)', stop_on_error=False)
    ch.wait_for(lambda m: m.parent_id == req.msg_id and m.msg_type == "stream", 20, "the cell to start")
    t0 = time.monotonic()
    r = frontend.post(f"/api/kernels/{kid}/interrupt", {})
    assert r.status_code == 204, (r.status_code, r.text[:300])
    res = ch.collect_execution(req, timeout=10)
    assert time.monotonic() - t0 < 10
    assert res.status == "error" and res.reply.content["ename"] == "KeyboardInterrupt", res
    after = ch.run("print('alive')")
    assert after.status == "ok" and after.stdout() == "alive\n", after


def test_restart_clears_state(frontend, gw):
    kid = frontend.start_kernel()
    ch = frontend.open_channel(kid)
    assert ch.run("kg_v = 5").status == "ok"
    model = expect(frontend.post(f"/api/kernels/{kid}/restart", {}), 200).json()
    assert model["id"] == kid
    assert kid in gateway_kernel_ids(gw)
    if gw.is_reference:
        ch.nudge()  # see test_channels.test_restart_clears_state
    res = ch.run("print(kg_v)", timeout=45, stop_on_error=False)
    assert res.status == "error" and res.reply.content["ename"] == "NameError", res
    res = ch.run("print('fresh')")
    assert res.stdout() == "fresh\n", res


def test_shutdown_through_frontend(frontend, gw):
    kid = frontend.start_kernel()
    ch = frontend.open_channel(kid)
    assert ch.run("print(1)").stdout() == "1\n"
    r = frontend.delete(f"/api/kernels/{kid}")
    assert r.status_code == 204, (r.status_code, r.text[:300])
    poll_until(lambda: gw.get(f"/api/kernels/{kid}").status_code == 404, 20,
               "the kernel to be gone from the gateway")
    assert kid not in gateway_kernel_ids(gw)
    r = frontend.get(f"/api/kernels/{kid}")
    # Notebook 6.4.12 turns the gateway's 404 into `200 null`; Jupyter Server answers 404.
    assert r.status_code == 404 or (frontend.kind == "notebook" and r.status_code == 200
                                    and r.json() is None), (r.status_code, r.text[:300])
    assert kid not in [k["id"] for k in expect(frontend.get("/api/kernels"), 200).json()]


def test_warm_pool_kernel_through_jupyter_server_gets_the_notebooks_directory(tmp_path):
    """Jupyter Server asks for a kernel for a notebook in a subdirectory: it sends that
    directory as KERNEL_WORKING_DIR. A kernel from kernelgate's warm pool runs there, as a
    freshly launched one would."""
    gw = launch_gateway(tmp_path / "gw", extra=["--warm-pool", "python3=1"])
    fe = None
    try:
        if gw.is_reference:
            pytest.skip("--warm-pool is kernelgate's")

        def ready() -> bool:
            text = expect(gw.get("/metrics"), 200).text
            return re.search(r'^kernelgate_warm_pool_kernels\{kernelspec="python3",'
                             r'state="ready"\} 1$', text, re.M) is not None
        poll_until(ready, 45, "the warm pool's kernel")
        fe = Frontend("jupyter_server", gw, tmp_path / "fe")
        sub = tmp_path / "fe" / "root" / "lab"
        sub.mkdir()
        model = expect(fe.post("/api/sessions", {"path": "lab/analysis.ipynb", "type": "notebook",
                                                 "kernel": {"name": "python3"}}), 201).json()
        kid = model["kernel"]["id"]
        fe.kernels.append(kid)
        metrics = expect(gw.get("/metrics"), 200).text
        assert re.search(r"^kernelgate_warm_pool_claims_total 1$", metrics, re.M), \
            "the kernel did not come from the pool"
        ch = fe.open_channel(kid)
        res = ch.run("import os; print(os.getcwd())")
        assert res.status == "ok", res
        assert res.stdout().strip() == str(sub), res
        assert res.reply.content["execution_count"] == 1, res.reply.content
    finally:
        if fe is not None:
            fe.stop()
        gw.stop()
