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
import time
import urllib.request

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


def test_spend_control_example(mock, workdir):
    """The README's spend-control example, as written (only the binary and
    the addresses swapped): a friend's token limited to gpt-4o-mini* and
    $5 a month, used with the official Python SDK, then the usage report."""
    import openai

    here = tempfile.mkdtemp(dir=workdir)
    binary = lambda line: line.replace("chatgpt-gateway ", shlex.quote(BINARY) + " ", 1)
    new = snippet("spend-new").strip()
    assert new.startswith("chatgpt-gateway tokens new"), new
    printed = run(["bash", "-c", binary(new)], cwd=here).splitlines()
    token = printed[0].split(": ", 1)[1]
    entry = json.loads(printed[2])
    assert entry["limits"] == {"usd_per_month": 5.0} and entry["models"] == ["gpt-4o-mini*"], entry
    assert token not in printed[2], "the entry holds the digest, not the token"
    # A second token whose budget the mock's tiny usage can exhaust.
    tiny = run([BINARY, "tokens", "new", "--name", "tiny", "--limit", "usd_total=0.000001", "--json"], cwd=here)
    tiny = json.loads(tiny)
    with open(os.path.join(here, "tokens.json"), "w") as f:
        json.dump({"tokens": [entry, tiny["entry"]]}, f)
    port = free_port()
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL=mock.url,
               UPSTREAM_API_KEY="sk-owner", LOG_FORMAT="json")
    log_path = os.path.join(here, "gateway.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([BINARY], cwd=here, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, "the spend example's gateway")
        base = "http://127.0.0.1:%d/v1" % port
        friend = openai.OpenAI(base_url=base, api_key=token)
        hi = [{"role": "user", "content": "hi"}]
        answer = friend.chat.completions.create(model="gpt-4o-mini", messages=hi)
        assert answer.choices[0].message.content == WANT
        before = len(mock.requests())
        try:
            friend.chat.completions.create(model="gpt-4o", messages=hi)
            raise AssertionError("gpt-4o was allowed")
        except openai.PermissionDeniedError as e:
            assert e.code == "model_not_allowed", e
        assert len(mock.requests()) == before, "a refused model never reaches OpenAI"
        # A spent budget: the SDK raises at once and does not retry.
        spender = openai.OpenAI(base_url=base, api_key=tiny["token"], max_retries=2)
        spender.chat.completions.create(model="gpt-4o-mini", messages=hi)
        try:
            spender.chat.completions.create(model="gpt-4o-mini", messages=hi)
            raise AssertionError("the spent budget let a request through")
        except openai.RateLimitError as e:
            assert e.code == "insufficient_quota", e
        # The SDK raised after any retries it made; the request after them
        # is logged after theirs (log lines are written in order): once its
        # line is there, every retry's would be too.
        sub = json.load(urllib.request.urlopen(base + "/dashboard/billing/subscription?token=" + token))
        lines = lambda: [json.loads(l) for l in open(log_path) if l.endswith("}\n")]
        deadline = time.time() + 10
        while not any(l.get("path", "").endswith("/dashboard/billing/subscription") for l in lines()):
            assert time.time() < deadline, "the request's access line was never written"
            time.sleep(0.02)
        refusals = [l for l in lines() if l.get("status") == 429]
        assert len(refusals) == 1, "x-should-retry: false, so no retries: %s" % refusals
        assert sub["hard_limit_usd"] == 5.0 and sub["access_until"] == 1798761600, sub
        report = run(["bash", "-c", binary(snippet("spend-report").strip())], cwd=here)
        assert "friend" in report and "gpt-4o-mini" in report and "usd_per_month" in report, report
    finally:
        proc.terminate()
        proc.wait()
