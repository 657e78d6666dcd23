"""The README's "Use it from your code" snippets, run as written (only the URL,
token and key swapped), through the local server and under cargo lambda watch."""

import json
import os
import subprocess
import sys

from conftest import GW_TOKEN, ROOT
from readme import adapted

WANT = "Hello from the mock!"


def run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_python_snippet(target):
    assert run([sys.executable, "-c", adapted("python", target.base_url, GW_TOKEN)]) == WANT


def test_node_snippet(target):
    path = os.path.join(ROOT, "tests", "compat", "node", "readme-snippet.generated.mjs")
    with open(path, "w") as f:
        f.write(adapted("node", target.base_url, GW_TOKEN))
    try:
        assert run(["node", path]) == WANT
    finally:
        os.remove(path)


def test_curl_snippets(target):
    plain = json.loads(run(["bash", "-c", adapted("curl", target.base_url, GW_TOKEN)]))
    assert plain["choices"][0]["message"]["content"] == WANT
    streamed = run(["bash", "-c", adapted("curl-stream", target.base_url, GW_TOKEN)])
    events = [line[6:] for line in streamed.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == WANT
