"""A real browser: headless Chromium loads a page from one local origin and
streams a chat completion from the gateway on another with fetch (the README's
browser snippet). CORS lets the allowed origin through and the browser refuses
the other one."""

import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import KEYED_TOKEN, ROOT
from readme import adapted

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

PAGE = """<!doctype html>
<meta charset="utf-8"><title>running</title>
<pre id="answer"></pre>
<script type="module">
window.__updates = [];
const start = performance.now();
new MutationObserver(() => window.__updates.push(performance.now() - start))
  .observe(document.querySelector("#answer"), { childList: true, characterData: true, subtree: true });
try {
%s
  document.title = "done";
} catch (e) {
  document.title = "error: " + e;
}
</script>
"""


def serve(directory, port):
    handler = functools.partial(SimpleHTTPRequestHandler, directory=directory)
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_browser_streams_from_an_allowed_origin_and_is_refused_elsewhere(gateway, page_ports):
    if not os.access(CHROMIUM, os.X_OK):
        reason = os.environ.get("BROWSER_SKIP_REASON", "%s is not installed" % CHROMIUM)
        pytest.skip("browser check skipped: " + reason)
    directory = tempfile.mkdtemp()
    with open(os.path.join(directory, "index.html"), "w") as f:
        f.write(PAGE % adapted("browser", gateway.base_url, KEYED_TOKEN))
    allowed, denied = (serve(directory, port) for port in page_ports)
    try:
        urls = ["http://127.0.0.1:%d/index.html" % port for port in page_ports]
        run = subprocess.run(["node", "browser.mjs", *urls], cwd=os.path.join(ROOT, "tests", "compat", "node"),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        ok, refused = (json.loads(line) for line in run.stdout.strip().splitlines())
    finally:
        allowed.shutdown()
        denied.shutdown()
        shutil.rmtree(directory, ignore_errors=True)
    assert ok["title"] == "done", ok
    assert ok["answer"] == "Hello from the mock!"
    # The page saw the answer grow chunk by chunk (the mock sends one every 200 ms).
    assert len(ok["updates"]) >= 5 and ok["updates"][-1] - ok["updates"][0] > 600, ok["updates"]
    assert refused["title"].startswith("error: TypeError"), refused
    assert refused["answer"] == ""
    assert '"status":403' in gateway.logs(until='"status":403'), "the disallowed preflight was answered 403"
