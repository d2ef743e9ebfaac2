# SPDX-License-Identifier: BSD-3-Clause
"""`kernelgate serve --config FILE`: the README's configuration file. Keys are the long option
names, at the top level or in a [serve] section; the command line beats the environment, which
beats the file; a key or value the gateway does not take stops it with a clear error."""
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import requests

KG = os.environ["KG_BIN"]
ECHO = os.environ["KG_ECHO_KERNEL"]
TOKEN = "config-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernels_dir(tmp: Path) -> Path:
    d = tmp / "kernels" / "echo"
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps(
        {"argv": [ECHO, "-f", "{connection_file}"], "display_name": "echo", "language": "echo",
         "interrupt_mode": "message"}))
    return d.parent


class Served:
    """kernelgate serve with a config file; the port it announced and its log."""

    def __init__(self, tmp: Path, config: str, *args: str, env: dict = None):
        tmp.mkdir(parents=True, exist_ok=True)
        self.cfg = tmp / "kernelgate.toml"
        self.cfg.write_text(config)
        self.log = tmp / "gateway.log"
        self.proc = subprocess.Popen(
            [KG, "serve", "--config", str(self.cfg), "--data-dir", str(tmp / "data"),
             "--auth-token", TOKEN, *args],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        self.url = None
        deadline = time.monotonic() + 20
        while self.url is None and time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            for line in self.log.read_text().splitlines():
                if "kernelgate is running at " in line:
                    self.url = line.split("running at ")[1].strip().rstrip("/")
            time.sleep(0.05)
        assert self.url, self.log.read_text()

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, headers={"Authorization": f"token {TOKEN}"},
                            timeout=10)

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(self.url + path, json=body,
                             headers={"Authorization": f"token {TOKEN}"}, timeout=30)

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(20) == 0, self.log.read_text()


def test_top_level_keys_set_the_options(tmp_path):
    port = free_port()
    g = Served(tmp_path, f"""# kernelgate.toml
ip = "127.0.0.1"
port = {port}
kernel-dir = ["{kernels_dir(tmp_path)}"]
no-conda = true
max_kernels = 2
warm-pool = ["echo=1"]
log-format = "json"
""")
    try:
        assert g.url == f"http://127.0.0.1:{port}"
        assert "echo" in g.get("/api/kernelspecs").json()["kernelspecs"]
        metrics = g.get("/metrics").text
        assert 'kernelgate_warm_pool_kernels{kernelspec="echo",state="target"} 1' in metrics
        # max_kernels (an underscore is taken for a dash): the third start is refused.
        for _ in range(2):
            assert g.post("/api/kernels", {"name": "echo"}).status_code == 201
        r = g.post("/api/kernels", {"name": "echo"})
        assert r.status_code == 403 and "maximum number of kernels (2)" in r.json()["message"]
        first = g.log.read_text().splitlines()[0]
        assert json.loads(first)["level"] == "info", first  # log-format = "json"
    finally:
        g.stop()


def test_a_serve_section_and_precedence_command_line_then_environment_then_file(tmp_path):
    file_port, env_port, cli_port = free_port(), free_port(), free_port()
    config = f"[serve]\nport = {file_port}\n"
    g = Served(tmp_path / "a", config)
    assert g.url.endswith(f":{file_port}")
    g.stop()
    g = Served(tmp_path / "b", config, env={"KERNELGATE_PORT": str(env_port)})
    assert g.url.endswith(f":{env_port}")
    g.stop()
    g = Served(tmp_path / "c", config, "--port", str(cli_port),
               env={"KERNELGATE_PORT": str(env_port)})
    assert g.url.endswith(f":{cli_port}")
    g.stop()


def test_what_the_gateway_does_not_take_stops_it_with_a_clear_error(tmp_path):
    cases = {
        "bogus = 1\n": 'unknown option "bogus"',
        'warm-pool = ["python3"]\n': "warm-pool: --warm-pool: expected NAME=N",
        "no-conda = maybe\n": "no-conda: Could not convert",
        "[other]\nport = 1\n": "unknown section [other]",
        'config = "x.toml"\n': 'unknown option "config"',
    }
    for i, (text, message) in enumerate(cases.items()):
        cfg = tmp_path / f"c{i}.toml"
        cfg.write_text(text)
        p = subprocess.run([KG, "serve", "--config", str(cfg), "--data-dir",
                            str(tmp_path / "data"), "--port", "0"],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 2, (text, p.stdout, p.stderr)
        assert f"config file {cfg}: " in p.stderr and message in p.stderr, (text, p.stderr)
        assert "running at" not in p.stdout + p.stderr
    p = subprocess.run([KG, "serve", "--config", str(tmp_path / "missing.toml")],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2 and "missing.toml" in p.stderr, p.stderr
