# SPDX-License-Identifier: BSD-3-Clause
"""REST API of the gateway: /api, kernelspecs, kernels, sessions, authentication."""
from __future__ import annotations

import http.client
import json
import re
import uuid
from pathlib import Path

import pytest

from kg_client import LAST_ACTIVITY_RE, expect, poll_until

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SPEC_DIR = Path("/usr/share/jupyter/kernels/python3")


def assert_json_error(resp, status):
    assert resp.status_code == status, f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:500]!r}"
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and "message" in body and "reason" in body, body
    assert isinstance(body["message"], str) and body["message"], body
    return body


def assert_kernel_model(model, name="python3"):
    assert set(model) >= {"id", "name", "last_activity", "execution_state", "connections"}, model
    assert UUID_RE.match(model["id"]), model["id"]
    assert model["name"] == name
    assert re.match(LAST_ACTIVITY_RE, model["last_activity"]), model["last_activity"]
    assert isinstance(model["execution_state"], str) and model["execution_state"], model
    assert isinstance(model["connections"], int) and model["connections"] >= 0, model


def raw_get(gw, path, headers=None):
    """GET with the path sent byte for byte (no client-side normalisation of dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------
# /api and kernelspecs
# --------------------------------------------------------------------------------------

def test_api_version(gw):
    r = expect(gw.get("/api"), 200)
    body = r.json()
    assert isinstance(body.get("version"), str) and body["version"], body


def test_kernelspecs_list(gw):
    body = expect(gw.get("/api/kernelspecs"), 200).json()
    assert set(body) >= {"default", "kernelspecs"}, body
    specs = body["kernelspecs"]
    assert body["default"] in specs, body
    assert "python3" in specs, sorted(specs)
    for name, model in specs.items():
        assert model["name"] == name
        spec = model["spec"]
        assert isinstance(spec["argv"], list) and spec["argv"], spec
        assert isinstance(spec["display_name"], str) and spec["display_name"], spec
        assert isinstance(spec["language"], str), spec
        for res_name, url in model.get("resources", {}).items():
            assert "/kernelspecs/" in url, (res_name, url)
    on_disk = json.loads((SPEC_DIR / "kernel.json").read_text())
    py = specs["python3"]["spec"]
    assert py["argv"] == on_disk["argv"]
    assert py["display_name"] == on_disk["display_name"]
    assert py["language"] == on_disk["language"]
    assert py.get("metadata", {}) == on_disk.get("metadata", {})


def test_kernelspec_single(gw):
    listing = expect(gw.get("/api/kernelspecs"), 200).json()["kernelspecs"]["python3"]
    single = expect(gw.get("/api/kernelspecs/python3"), 200).json()
    assert single["name"] == "python3"
    assert single["spec"] == listing["spec"]
    assert single.get("resources", {}) == listing.get("resources", {})


def test_kernelspec_unknown_is_404(gw):
    assert_json_error(gw.get("/api/kernelspecs/no-such-spec-kg"), 404)


def _resource_path(url: str) -> str:
    # Resource URLs may be absolute paths or full URLs; the part from /kernelspecs/ on is what counts.
    return url[url.index("/kernelspecs/"):]


def test_kernelspec_resource_logo(gw):
    if not (SPEC_DIR / "logo-64x64.png").exists():
        pytest.skip("the python3 kernelspec dir has no logo-64x64.png")
    model = expect(gw.get("/api/kernelspecs/python3"), 200).json()
    url = model.get("resources", {}).get("logo-64x64")
    assert url, f"logo-64x64 missing from resources: {model.get('resources')}"
    r = expect(gw.get(_resource_path(url)), 200)
    assert r.headers.get("Content-Type", "").split(";")[0] == "image/png", r.headers
    assert r.content == (SPEC_DIR / "logo-64x64.png").read_bytes()
    head = expect(gw.request("HEAD", _resource_path(url)), 200)
    assert head.headers.get("Content-Type", "").split(";")[0] == "image/png", head.headers
    if (SPEC_DIR / "logo-svg.svg").exists():
        svg = expect(gw.get("/kernelspecs/python3/logo-svg.svg"), 200)
        assert svg.content == (SPEC_DIR / "logo-svg.svg").read_bytes()


def test_kernelspec_resource_missing_file_is_404(gw):
    r = gw.get("/kernelspecs/python3/no-such-file.png")
    assert r.status_code == 404, (r.status_code, r.text[:200])


@pytest.mark.parametrize("path", [
    "/kernelspecs/python3/../../../../../../../../etc/passwd",
    "/kernelspecs/python3/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/kernelspecs/python3/..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/kernelspecs/python3/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/kernelspecs/python3/..%5c..%5c..%5c..%5c..%5c..%5cetc%5cpasswd",
    "/kernelspecs/python3//etc/passwd",
    "/kernelspecs/python3/%2fetc%2fpasswd",
    "/kernelspecs/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/kernelspecs/python3/../../../../../../../../proc/self/environ",
], ids=["dotdot", "pct-dotdot", "dotdot-pct-slash", "all-encoded", "backslash", "absolute",
        "absolute-encoded", "spec-name-dotdot", "proc-environ"])
def test_kernelspec_resource_path_traversal(gw, path):
    status, headers, body = raw_get(gw, path, {"Authorization": f"token {gw.token}"})
    assert b"root:x:0:0" not in body and b"PATH=" not in body, f"{path} leaked file content: {body[:200]!r}"
    if not gw.is_reference:  # Jupyter Server's HTML error page embeds the token
        assert gw.token.encode() not in body, f"{path}: the error page contains the token"
    if gw.is_reference:
        # Jupyter Server answers 403 for paths that resolve outside the spec dir.
        assert status in (403, 404), (path, status)
    else:
        assert status == 404, (path, status, body[:300])


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------

def test_start_kernel_model_and_listing(gw):
    r = expect(gw.post("/api/kernels", {"name": "python3"}), 201)
    model = r.json()
    gw.kernels.append(model["id"])
    assert_kernel_model(model)
    location = r.headers.get("Location", "")
    assert location.endswith(f"/api/kernels/{model['id']}"), location
    one = gw.kernel_model(model["id"])
    assert_kernel_model(one)
    assert one["id"] == model["id"]
    listing = expect(gw.get("/api/kernels"), 200).json()
    assert isinstance(listing, list)
    assert model["id"] in [k["id"] for k in listing], listing
    for k in listing:
        assert_kernel_model(k, name=k["name"])
    # No body at all starts the default kernelspec.
    r2 = expect(gw.post("/api/kernels"), 201)
    gw.kernels.append(r2.json()["id"])
    default = expect(gw.get("/api/kernelspecs"), 200).json()["default"]
    assert_kernel_model(r2.json(), name=default)


def test_interrupt_restart_delete(gw, kernel):
    kid = kernel["id"]
    gw.wait_execution_state(kid, ("idle", "busy", "starting"))
    r = gw.post(f"/api/kernels/{kid}/interrupt", {})
    assert r.status_code == 204, (r.status_code, r.text[:300])
    r = expect(gw.post(f"/api/kernels/{kid}/restart", {}), 200)
    model = r.json()
    assert_kernel_model(model)
    assert model["id"] == kid
    assert kid in [k["id"] for k in expect(gw.get("/api/kernels"), 200).json()]
    r = gw.delete(f"/api/kernels/{kid}")
    assert r.status_code == 204, (r.status_code, r.text[:300])
    assert_json_error(gw.get(f"/api/kernels/{kid}"), 404)
    assert kid not in [k["id"] for k in expect(gw.get("/api/kernels"), 200).json()]
    assert_json_error(gw.delete(f"/api/kernels/{kid}"), 404)


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""), ("POST", "/interrupt"),
                                           ("POST", "/restart")])
def test_unknown_kernel_is_404(gw, method, suffix):
    if suffix == "/restart":
        gw.reference_deviation("Jupyter Server 1.23 answers 500 'Exception restarting kernel'")
    kid = str(uuid.uuid4())
    body = {} if method == "POST" else None
    r = gw.request(method, f"/api/kernels/{kid}{suffix}", json=body)
    assert_json_error(r, 404)


def test_malformed_kernel_id_is_404(gw):
    r = gw.get("/api/kernels/not-a-kernel-id")
    assert r.status_code == 404, (r.status_code, r.text[:300])


def test_start_kernel_invalid_json_is_400(gw):
    r = gw.post("/api/kernels", data=b"{not json", headers={"Content-Type": "application/json"})
    assert_json_error(r, 400)


def test_start_kernel_env_not_object_is_400(gw):
    gw.reference_deviation("Jupyter Server 1.23 ignores `env` and answers 201")
    for env in ("KERNEL_X=1", ["KERNEL_X"], 5):
        r = gw.post("/api/kernels", {"name": "python3", "env": env})
        if r.status_code == 201:
            gw.kernels.append(r.json()["id"])
        assert_json_error(r, 400)


def test_start_kernel_body_not_object_is_400(gw):
    gw.reference_deviation("Jupyter Server 1.23 answers 500 for a JSON array body")
    r = gw.post("/api/kernels", data=b"[1, 2]", headers={"Content-Type": "application/json"})
    if r.status_code == 201:
        gw.kernels.append(r.json()["id"])
    assert_json_error(r, 400)


def test_start_kernel_unknown_name(gw):
    # Jupyter Server 1.23 (and Kernel Gateway, which reuses its handler) lets NoSuchKernel escape
    # as a 500 "Unhandled error". The contract wants a client error.
    gw.reference_deviation("Jupyter Server 1.23 answers 500 for an unknown kernel name")
    r = gw.post("/api/kernels", {"name": "no-such-kernelspec-kg"})
    if r.status_code == 201:
        gw.kernels.append(r.json()["id"])
    assert_json_error(r, 404)
    for bad in ("../../python3", "py;rm -rf /"):
        r = gw.post("/api/kernels", {"name": bad})
        if r.status_code == 201:
            gw.kernels.append(r.json()["id"])
        assert r.status_code in (400, 404), (bad, r.status_code, r.text[:300])


# --------------------------------------------------------------------------------------
# authentication
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_targets(gw):
    """A real kernel and session, so that a 404 can never stand in for a missing auth check."""
    # Not registered in gw.kernels: these must outlive the per-test cleanup.
    kid = expect(gw.post("/api/kernels", {"name": "python3"}), 201).json()["id"]
    sess = expect(gw.post("/api/sessions", {"path": "auth-target.ipynb", "type": "notebook",
                                             "name": "auth-target.ipynb", "kernel": {"name": "python3"}}),
                  201).json()
    yield {"kid": kid, "sid": sess["id"]}
    gw.delete(f"/api/sessions/{sess['id']}")
    gw.delete(f"/api/kernels/{kid}")


AUTH_ROUTES = [
    ("GET", "/api"),
    ("GET", "/api/kernels"),
    ("POST", "/api/kernels"),
    ("GET", "/api/kernels/{kid}"),
    ("DELETE", "/api/kernels/{kid}"),
    ("POST", "/api/kernels/{kid}/interrupt"),
    ("POST", "/api/kernels/{kid}/restart"),
    ("GET", "/api/kernelspecs"),
    ("GET", "/api/kernelspecs/python3"),
    ("GET", "/kernelspecs/python3/logo-svg.svg"),
    ("GET", "/kernelspecs/python3/logo-64x64.png"),
    ("GET", "/api/sessions"),
    ("POST", "/api/sessions"),
    ("GET", "/api/sessions/{sid}"),
    ("PATCH", "/api/sessions/{sid}"),
    ("DELETE", "/api/sessions/{sid}"),
    ("GET", "/api/kernels/{kid}/channels"),
]

BAD_CREDENTIALS = {
    "missing": {},
    "wrong-token": {"Authorization": "token not-the-token"},
    "wrong-bearer": {"Authorization": "Bearer not-the-token"},
    "empty-token": {"Authorization": "token "},
    "wrong-query": "?token=not-the-token",
}


@pytest.mark.parametrize("cred", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("method,route", AUTH_ROUTES, ids=[f"{m} {p}" for m, p in AUTH_ROUTES])
def test_bad_credentials_are_403(gw, auth_targets, method, route, cred):
    path = route.format(**auth_targets)
    if gw.is_reference and path == "/api":
        pytest.skip("Jupyter Server serves /api without a token")
    if gw.is_reference and path.startswith("/kernelspecs/"):
        pytest.skip("Jupyter Server redirects unauthenticated resource requests to /login")
    if gw.is_reference and path.endswith("/channels") and cred == "empty-token":
        pytest.skip("Jupyter Server 1.23 answers 400 here")
    c = BAD_CREDENTIALS[cred]
    headers = {} if isinstance(c, str) else dict(c)
    if isinstance(c, str):
        path += c
    body = {} if method in ("POST", "PATCH") else None
    if path.endswith("/channels") or "/channels?" in path:
        # A plain GET of the WebSocket route with upgrade headers: the check must precede the upgrade.
        headers.update({"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    r = gw.request(method, path, auth=False, headers=headers, json=body)
    if gw.is_reference and "/channels" in path:
        # Jupyter Server rejects the upgrade with a 403 HTML page.
        assert r.status_code == 403, (r.status_code, r.text[:300])
    else:
        assert_json_error(r, 403)
    if not gw.is_reference:
        assert isinstance(r.json()["reason"], str), r.json()
    # The target must have survived the rejected request.
    assert gw.get(f"/api/kernels/{auth_targets['kid']}").status_code == 200
    assert gw.get(f"/api/sessions/{auth_targets['sid']}").status_code == 200


@pytest.mark.parametrize("style", ["token", "Bearer", "query"])
def test_good_credentials_are_accepted(gw, style):
    if style == "Bearer":
        gw.reference_deviation("Jupyter Server 1.23 only parses the `token` scheme")
    headers = {}
    path = "/api/kernels"
    if style == "query":
        path += f"?token={gw.token}"
    else:
        headers["Authorization"] = f"{style} {gw.token}"
    r = gw.request("GET", path, auth=False, headers=headers)
    assert r.status_code == 200, (style, r.status_code, r.text[:300])
    assert isinstance(r.json(), list)
    r = gw.request("GET", "/api/kernelspecs" + (path[len("/api/kernels"):]), auth=False, headers=headers)
    assert r.status_code == 200, (style, r.status_code, r.text[:300])


def test_health_needs_no_token(gw):
    gw.reference_deviation("Jupyter Server 1.23 has no /api/health")
    r = gw.request("GET", "/api/health", auth=False)
    assert r.status_code == 200, (r.status_code, r.text[:300])


# --------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------

def assert_session_model(s, path, name, type_):
    assert set(s) >= {"id", "path", "name", "type", "kernel"}, s
    assert UUID_RE.match(s["id"]), s["id"]
    assert (s["path"], s["name"], s["type"]) == (path, name, type_), s
    assert_kernel_model(s["kernel"])


def test_sessions_lifecycle(gw):
    r = expect(gw.post("/api/sessions", {"path": "work/a.ipynb", "type": "notebook", "name": "a.ipynb",
                                         "kernel": {"name": "python3"}}), 201)
    s = r.json()
    assert_session_model(s, "work/a.ipynb", "a.ipynb", "notebook")
    sid, kid = s["id"], s["kernel"]["id"]
    gw.kernels.append(kid)
    assert r.headers.get("Location", "").endswith(f"/api/sessions/{sid}"), r.headers
    assert gw.kernel_model(kid)["id"] == kid

    listing = expect(gw.get("/api/sessions"), 200).json()
    assert sid in [x["id"] for x in listing], listing
    one = expect(gw.get(f"/api/sessions/{sid}"), 200).json()
    assert_session_model(one, "work/a.ipynb", "a.ipynb", "notebook")
    assert one["kernel"]["id"] == kid

    patched = expect(gw.patch(f"/api/sessions/{sid}", {"path": "work/b.ipynb", "name": "b.ipynb"}), 200).json()
    assert_session_model(patched, "work/b.ipynb", "b.ipynb", "notebook")
    assert patched["id"] == sid and patched["kernel"]["id"] == kid
    again = expect(gw.get(f"/api/sessions/{sid}"), 200).json()
    assert (again["path"], again["name"]) == ("work/b.ipynb", "b.ipynb")

    r = gw.delete(f"/api/sessions/{sid}")
    assert r.status_code == 204, (r.status_code, r.text[:300])
    assert gw.get(f"/api/sessions/{sid}").status_code == 404
    assert sid not in [x["id"] for x in expect(gw.get("/api/sessions"), 200).json()]
    poll_until(lambda: gw.get(f"/api/kernels/{kid}").status_code == 404, 15,
               f"kernel {kid} of the deleted session to be gone")


def test_session_with_existing_kernel(gw, kernel):
    kid = kernel["id"]
    s = expect(gw.post("/api/sessions", {"path": "c.py", "type": "file", "name": "c.py",
                                         "kernel": {"id": kid}}), 201).json()
    assert_session_model(s, "c.py", "c.py", "file")
    assert s["kernel"]["id"] == kid
    r = gw.delete(f"/api/sessions/{s['id']}")
    assert r.status_code == 204, (r.status_code, r.text[:300])
    poll_until(lambda: gw.get(f"/api/kernels/{kid}").status_code == 404, 15, f"kernel {kid} to be gone")


def test_unknown_session_is_404(gw):
    sid = str(uuid.uuid4())
    assert gw.get(f"/api/sessions/{sid}").status_code == 404
    assert gw.delete(f"/api/sessions/{sid}").status_code == 404


# --------------------------------------------------------------------------------------
# HTTP keep-alive
# --------------------------------------------------------------------------------------

def _read_http_response(sock, deadline):
    """Read one HTTP/1.1 response (Content-Length bodies only); b'' if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(deadline.remaining(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(body) < need:
        sock.settimeout(max(deadline.remaining(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


IDLE_WAIT = 31.5  # README: reads time out after 30 s


def test_idle_keepalive_connection_is_served_or_closed(gw):
    """A keep-alive connection that served POST /api/kernels and then sat idle past the server's
    read timeout must either be closed by the server or still be served: never left hanging
    (browsers and requests/urllib3 reuse such connections)."""
    import select
    import socket
    from kg_client import Deadline

    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    try:
        body = b'{"name": "python3"}'
        sock.sendall(b"POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
                     b"Content-Type: application/json\r\nAuthorization: token " + gw.token.encode() +
                     b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        resp = _read_http_response(sock, Deadline(60, "POST /api/kernels response"))
        assert resp.startswith(b"HTTP/1.1 201"), resp[:200]
        kid = json.loads(resp.partition(b"\r\n\r\n")[2])["id"]
        gw.kernels.append(kid)
        # Idle: the server may close the connection (EOF) at any time; wait past its timeout.
        idle = Deadline(IDLE_WAIT, "idle period")
        closed = False
        while not idle.expired():
            readable, _, _ = select.select([sock], [], [], max(idle.remaining(), 0))
            if readable:
                closed = sock.recv(1) == b""
                assert closed, "server sent unsolicited bytes on an idle connection"
                break
        if closed:
            return
        sock.sendall(b"GET /api/kernels/" + kid.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: token " + gw.token.encode() + b"\r\n\r\n")
        try:
            resp = _read_http_response(sock, Deadline(5, "response on the reused connection"))
        except socket.timeout:
            pytest.fail(f"connection idle for {IDLE_WAIT}s after POST /api/kernels was neither closed "
                        f"nor served: a request sent on it got no answer within 5 s")
        assert resp == b"" or resp.startswith(b"HTTP/1.1 200"), resp[:200]
    finally:
        sock.close()
