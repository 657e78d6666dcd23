"""The console page in a real browser: headless Chromium (Debian's, driven by
tests/compat/node/console.mjs) logs in by the "Admin token" label, creates a
token, and the official Python SDK spends with it through the gateway; the
page then shows the spend in its chart and table, raises the token's limit,
shrugs off another site's forged request, revokes the token (whose next SDK
call is refused) and logs out (whose cookie is then refused by the server).
Screenshots of every step are kept in target/screenshots/console/."""

import datetime
import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from conftest import BINARY, ROOT, free_port, wait_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ADMIN = "gw-console-Admin-1"
SHOTS = os.path.join(ROOT, "target", "screenshots", "console")


def evil_site(gateway_root):
    """Another site (localhost, not 127.0.0.1) whose page posts to the admin API."""
    page = (
        "<!doctype html><title>loading</title><script>"
        "fetch(%s + '/v1/gateway/tokens', {method: 'POST', credentials: 'include', mode: 'no-cors',"
        " body: JSON.stringify({name: 'planted-by-evil'})})"
        ".finally(() => { document.title = 'sent'; });</script>" % json.dumps(gateway_root)
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "http://localhost:%d/" % port


@pytest.fixture
def console_gateway(mock):
    workdir = tempfile.mkdtemp(prefix="gw-console-")
    tokens = os.path.join(workdir, "tokens.json")
    with open(tokens, "w") as f:
        json.dump([{"name": "ops", "token": ADMIN, "admin": True}], f)
    port = free_port()
    log_path = os.path.join(workdir, "gateway.log")
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL=mock.url, TOKENS_FILE=tokens,
               UPSTREAM_API_KEY="sk-console-upstream", LOG_FORMAT="json", RUST_LOG="info")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([BINARY], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    wait_port(port, proc, "gateway")
    yield "http://127.0.0.1:%d" % port, log_path
    proc.terminate()
    proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)


def admin_get(root, path, cookie=None):
    headers = {"cookie": cookie} if cookie else {"authorization": "Bearer " + ADMIN}
    request = urllib.request.Request(root + path, headers=headers)
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_an_operator_runs_the_console_in_a_browser(console_gateway):
    if not os.access(CHROMIUM, os.X_OK):
        reason = os.environ.get("BROWSER_SKIP_REASON", "%s is not installed" % CHROMIUM)
        pytest.skip("browser check skipped: " + reason)
    root, log_path = console_gateway
    os.makedirs(SHOTS, exist_ok=True)
    evil, evil_url = evil_site(root)
    driver = subprocess.Popen(
        ["node", "console.mjs", root, evil_url, SHOTS],
        cwd=os.path.join(ROOT, "tests", "compat", "node"),
        env=dict(os.environ, ADMIN_TOKEN=ADMIN),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = json.loads(driver.stdout.readline() or '{"phase": "none"}')
        assert first.get("phase") == 1, (first, driver.stderr.read() if driver.poll() is not None else "")
        secret = first["secret"]
        assert secret.startswith("gw-")
        # The official SDK, unchanged, spends with the token the page made.
        client = openai.OpenAI(base_url=root + "/v1", api_key=secret, max_retries=0)
        for _ in range(3):
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
            assert answer.usage.total_tokens > 0
        driver.stdin.write("spent\n")
        driver.stdin.close()
        second = json.loads(driver.stdout.readline() or '{"phase": "none"}')
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
        evil.shutdown()
    assert second.get("phase") == 2, second

    assert "invalid" in second["wrongLogin"]
    assert second["who"] == "Logged in as ops"
    cookie = second["cookie"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/", cookie
    assert cookie["secure"] is False, "plain http on loopback"
    assert ADMIN not in cookie["value"]
    assert "will not be shown again" in second["warning"]

    # The spend shows in the chart, the model table and the token's limit.
    assert second["rects"] > 0
    assert "sdk-user" in second["legend"]
    assert "gpt-4o-mini" in second["models"]
    row = next(r for r in second["rowsAfterSpend"] if r[0] == "sdk-user")
    assert "requests_per_minute: 3 / 100" in row[4], row
    assert row[5] == datetime.datetime.now(datetime.timezone.utc).date().isoformat(), row
    assert row[6] == "active"
    # The canary is text, never markup.
    assert any(r[0] == "<img src=x onerror=window.__xss=1>" for r in second["rowsAfterSpend"])
    assert second["xss"] == {"flag": False, "images": 0}

    row = next(r for r in second["rowsAfterRaise"] if r[0] == "sdk-user")
    assert "requests_per_minute: 3 / 200" in row[4], row
    # The other site's post created nothing.
    assert not any(r[0] == "planted-by-evil" for r in second["rowsAfterEvil"])
    status, listed = admin_get(root, "/v1/gateway/tokens")
    assert status == 200 and not any(t["name"] == "planted-by-evil" for t in listed["data"])

    assert "Revoke sdk-user?" in second["dialog"]
    row = next(r for r in second["rowsAfterRevoke"] if r[0] == "sdk-user")
    assert row[6] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}])

    # Logged out: the server refuses the old cookie.
    status, body = admin_get(root, "/v1/gateway/tokens", cookie="gw_session=" + cookie["value"])
    assert status == 401 and body["error"]["code"] == "invalid_session"

    assert second["foreign"] == [], "nothing fetched from another origin"
    assert second["errors"] == [], "no console error"
    assert second["narrowOverflow"] is False, "reads at 360 px without sideways scrolling"
    for name in ["1-login", "2-token-created", "3-spend", "4-revoked", "5-narrow", "6-logged-out"]:
        assert os.path.getsize(os.path.join(SHOTS, name + ".png")) > 1000
    with open(log_path) as f:
        log = f.read()
    assert secret not in log and ADMIN not in log, "no token in the gateway's log"
