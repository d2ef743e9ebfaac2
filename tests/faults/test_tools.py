# SPDX-License-Identifier: BSD-3-Clause
"""The README's two commands. tools/run.sh's arguments for `kernelgate serve`: its defaults
give way to the caller's own options (the README's example `tools/run.sh --port 9000
--auth-token mytoken`), and the real gateway accepts what comes out. tools/test.sh after
tools/run.sh in the same tree builds the test suite again."""
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def serve_args(*args: str) -> list:
    p = subprocess.run(["bash", "-c", 'source tools/serve-args.sh && serve_args "$@"', "_", *args],
                       cwd=REPO, capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_defaults_apply_only_to_options_not_given():
    assert serve_args() == ["--ip", "127.0.0.1", "--port", "8888"]
    assert serve_args("--port", "9000", "--auth-token", "t") == [
        "--ip", "127.0.0.1", "--port", "9000", "--auth-token", "t"]
    assert serve_args("--port=9000") == ["--ip", "127.0.0.1", "--port=9000"]
    assert serve_args("--ip", "0.0.0.0") == ["--port", "8888", "--ip", "0.0.0.0"]
    assert serve_args("--ip=::1", "--port", "1") == ["--ip=::1", "--port", "1"]
    # Arguments with spaces survive as one argument each.
    assert serve_args("--base-url", "/a b/") == [
        "--ip", "127.0.0.1", "--port", "8888", "--base-url", "/a b/"]


def test_the_readme_example_starts_a_gateway(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    args = serve_args("--port", str(port), "--auth-token", token, "--data-dir", str(tmp_path),
                      "--no-conda")
    proc = subprocess.Popen([os.environ["KG_BIN"], "serve", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while True:
            assert proc.poll() is None, f"kernelgate exited {proc.returncode}: {proc.stdout.read()}"
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/kernelspecs",
                                 headers={"Authorization": f"token {token}"}, timeout=2)
                break
            except requests.ConnectionError:
                assert time.time() < deadline, "kernelgate did not answer on the port given"
                time.sleep(0.1)
        assert r.status_code == 200 and "kernelspecs" in r.json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_test_command_builds_the_suite_in_a_tree_the_run_command_configured(tmp_path):
    # The README's two commands share build/: tools/run.sh configures it without the test
    # suite, and tools/test.sh, run after it, must get the suite back (CMake keeps the cached
    # option), or the tests would be missing or stale. Real cmake, the scripts' own flags.
    build = tmp_path / "build"

    def configure(flags: str) -> str:
        p = subprocess.run(
            ["bash", "-c", f'source tools/cmake-flags.sh && '
                           f'cmake -S . -B "$1" "${{{flags}[@]}}" >/dev/null', "_", str(build)],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        cache = (build / "CMakeCache.txt").read_text()
        return next(line for line in cache.splitlines()
                    if line.startswith("KERNELGATE_BUILD_TESTS:"))

    assert configure("run_cmake_flags") == "KERNELGATE_BUILD_TESTS:BOOL=OFF"
    assert not (build / "tests").exists()
    assert configure("test_cmake_flags") == "KERNELGATE_BUILD_TESTS:BOOL=ON"
    listed = subprocess.run(["ctest", "--test-dir", str(build), "-N"], capture_output=True,
                            text=True, timeout=60).stdout
    # Unit tests are discovered when built; the suites registered at configure time show.
    assert "users:test_users.py" in listed and "clients:services" in listed, listed[-500:]
