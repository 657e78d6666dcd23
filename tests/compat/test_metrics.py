"""The local server's Prometheus /metrics, read by a real Prometheus text
parser (prometheus_client's) after a known mix of requests, and /healthz."""

import json
import os
import subprocess
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import BINARY, free_port, wait_port

TOKEN = "gw-metrics-Token-1"


def fetch(url, body=None):
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(text):
    """{(name, frozenset(labels)): value} for every sample."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def start(mock, workdir, name, extra):
    here = os.path.join(workdir, name)
    os.makedirs(here, exist_ok=True)
    with open(os.path.join(here, "tokens.json"), "w") as f:
        json.dump({"tokens": [{"name": "metered", "token": TOKEN}]}, f)
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL=mock.url,
               METRICS_LISTEN="127.0.0.1:%d" % metrics_port, RUST_LOG="warn", **extra)
    proc = subprocess.Popen([BINARY], cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "gateway")
    wait_port(metrics_port, proc, "metrics listener")
    return proc, "http://127.0.0.1:%d" % port, "http://127.0.0.1:%d" % metrics_port


def mix(base):
    """Two model lists, a chat with usage, an upstream 500, a missing token."""
    assert fetch(base + "/v1/models?token=" + TOKEN)[0] == 200
    assert fetch(base + "/v1/models?token=" + TOKEN)[0] == 200
    chat = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert fetch(base + "/v1/chat/completions?token=" + TOKEN, chat)[0] == 200
    fail = json.dumps({"model": "force-500", "messages": []}).encode()
    assert fetch(base + "/v1/chat/completions?token=" + TOKEN, fail)[0] == 500
    assert fetch(base + "/v1/models")[0] == 401


def test_metrics_count_a_known_mix_exactly(mock, workdir):
    proc, base, metrics = start(mock, workdir, "metrics-default", {})
    try:
        mix(base)
        status, text = fetch(metrics + "/metrics")
        assert status == 200
        text = text.decode()
        assert TOKEN not in text and "metered" not in text, "no token, and no token label by default"
        got = samples(text)
        requests = {k: v for k, v in got.items() if k[0] == "chatgpt_gateway_requests_total"}
        assert requests == {
            ("chatgpt_gateway_requests_total", frozenset({("status", "200"), ("code", "upstream")})): 3,
            ("chatgpt_gateway_requests_total", frozenset({("status", "500"), ("code", "upstream")})): 1,
            ("chatgpt_gateway_requests_total", frozenset({("status", "401"), ("code", "missing_token")})): 1,
        }, requests
        assert got[("chatgpt_gateway_request_duration_seconds_count", frozenset())] == 5
        assert got[("chatgpt_gateway_upstream_first_byte_seconds_count", frozenset())] == 4
        tokens = lambda kind: got[("chatgpt_gateway_tokens_total", frozenset({("model", "gpt-4o-mini"), ("kind", kind)}))]
        assert (tokens("input"), tokens("cached_input"), tokens("output")) == (3, 0, 5)
        cost = got[("chatgpt_gateway_cost_usd_total", frozenset({("model", "gpt-4o-mini")}))]
        assert abs(cost - 0.00000345) < 1e-12, cost
        assert got[("chatgpt_gateway_requests_in_flight", frozenset())] == 0
        assert got[("chatgpt_gateway_usage_store_errors_total", frozenset())] == 0
        assert got[("chatgpt_gateway_token_list_loaded_timestamp_seconds", frozenset())] > 1.6e9
        status, health = fetch(metrics + "/healthz")
        health = json.loads(health)
        assert status == 200 and health["status"] == "ok" and health["tokens"] == 1, health
        assert health["store"] == "sqlite:usage.db", health
        # Not on the public listener: there, /metrics is a request like any other.
        assert fetch(base + "/metrics")[0] == 401
    finally:
        proc.terminate()
        proc.wait()


def test_token_labels_when_asked(mock, workdir):
    proc, base, metrics = start(mock, workdir, "metrics-labels", {"METRICS_TOKEN_LABELS": "true"})
    try:
        mix(base)
        text = fetch(metrics + "/metrics")[1].decode()
        assert TOKEN not in text
        got = samples(text)
        ok = ("chatgpt_gateway_requests_total", frozenset({("status", "200"), ("code", "upstream"), ("token", "metered")}))
        assert got[ok] == 3, got
        refused = ("chatgpt_gateway_requests_total", frozenset({("status", "401"), ("code", "missing_token"), ("token", "-")}))
        assert got[refused] == 1
        output = ("chatgpt_gateway_tokens_total", frozenset({("model", "gpt-4o-mini"), ("kind", "output"), ("token", "metered")}))
        assert got[output] == 5
    finally:
        proc.terminate()
        proc.wait()
