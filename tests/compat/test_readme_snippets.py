"""The documentation's snippets, run as written: the README's quick start
(only the binary and the addresses swapped), and the "Use it from your code"
snippets (only the URL, token and key swapped) through the local server and
under cargo lambda watch."""

import json
import os
import shlex
import subprocess
import sys
import tempfile

from conftest import BINARY, GW_TOKEN, ROOT, free_port, wait_port
from readme import adapted, snippet

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


def test_quick_start(mock, workdir):
    lines = [line for line in snippet("quickstart").splitlines() if line.strip()]
    assert len(lines) == 3, lines
    here = tempfile.mkdtemp(dir=workdir)
    run(["bash", "-c", lines[0]], cwd=here)
    port = free_port()
    start = lines[1].replace("cargo run --release", "exec " + shlex.quote(BINARY))
    assert start != lines[1], lines[1]
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL=mock.url)
    proc = subprocess.Popen(["bash", "-c", start], cwd=here, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "the quick start's gateway")
        call = lines[2].replace("127.0.0.1:8080", "127.0.0.1:%d" % port)
        assert call != lines[2], lines[2]
        assert json.loads(run(["bash", "-c", call]))["object"] == "list"
        seen = mock.last()
        assert seen["target"] == "/v1/models", seen
        assert ["authorization", "Bearer sk-your-openai-key"] in seen["headers"], seen
    finally:
        proc.terminate()
        proc.wait()
