"""Runs the measurements for scripts/bench and writes BENCHMARKS.md.

Three paths, the same work: direct to a fast upstream (nginx serving a 1 KB
JSON body and a 100 MB file, and proxying /sse and /upload to a small Rust
helper), through nginx as a reverse proxy with upstream keep-alive, and
through the gateway in local mode with tokens on.
"""

import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.join(ROOT, "target", "release", "chatgpt-gateway")
HELPER = os.path.join(ROOT, "target", "release", "examples", "mock_upstream")
TOKEN = "bench-token"
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WORK = tempfile.mkdtemp(prefix="gw-bench-")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("nothing listens on %d" % port)


def start(cmd, env=None, **kw):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    PROCS.append(proc)
    return proc


def rss_kib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- the paths

def nginx(conf_body, name):
    conf = os.path.join(WORK, name + ".conf")
    with open(conf, "w") as f:
        f.write("""
worker_processes 1;
%(user)s
pid %(work)s/%(name)s.pid;
error_log %(work)s/%(name)s.error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %(work)s/%(name)s-body;
  proxy_temp_path %(work)s/%(name)s-proxy;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  %(body)s
}
""" % {"work": WORK, "name": name, "body": conf_body, "user": "user root;" if os.geteuid() == 0 else ""})
    start(["nginx", "-c", conf, "-g", "daemon off;"])


def reverse_proxy(name, upstream_port, listen_port):
    """nginx as the reference reverse proxy: upstream keep-alive, nothing buffered."""
    return """
  upstream %s { server 127.0.0.1:%d; keepalive 64; }
  server {
    listen 127.0.0.1:%d;
    location / {
      proxy_pass http://%s; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_request_buffering off; client_max_body_size 0;
    }
  }""" % (name, upstream_port, listen_port, name)


def setup():
    helper_port, up_port, ngx_port, gw_port = free_port(), free_port(), free_port(), free_port()
    docroot = os.path.join(WORK, "www")
    os.makedirs(os.path.join(docroot, "v1"))
    body = json.dumps({"object": "list", "data": [{"id": "gpt-4o-mini-%03d" % i, "object": "model", "owned_by": "bench"} for i in range(14)]})
    with open(os.path.join(docroot, "v1", "models"), "w") as f:
        f.write(body[:1024].ljust(1024))
    with open(os.path.join(docroot, "v1", "download"), "wb") as f:
        f.write(os.urandom(1 << 20) * 100)
    start([HELPER, str(helper_port)])
    nginx("""
  upstream helper { server 127.0.0.1:%d; keepalive 64; }
  server {
    listen 127.0.0.1:%d;
    root %s;
    default_type application/json;
    location /v1/sse { proxy_pass http://helper; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
    location /v1/chat/completions { proxy_pass http://helper; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; client_max_body_size 0; }
    location /v1/upload { proxy_pass http://helper; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_request_buffering off; client_max_body_size 0; }
  }""" % (helper_port, up_port, docroot), "upstream")
    nginx(reverse_proxy("api", up_port, ngx_port), "proxy")
    tokens = os.path.join(WORK, "tokens.json")
    with open(tokens, "w") as f:
        json.dump({"tokens": [{"name": "bench", "token": TOKEN}]}, f)
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % gw_port, UPSTREAM_URL="http://127.0.0.1:%d" % up_port,
               TOKENS_FILE=tokens, RUST_LOG="info", LOG_FORMAT="json")
    gw = start([GATEWAY], env=env, cwd=WORK)
    # The same gateway with no usage store (usage is still read, not stored).
    off_port = free_port()
    start([GATEWAY], env=dict(env, GATEWAY_LISTEN="127.0.0.1:%d" % off_port, USAGE_STORE="off"), cwd=WORK)
    for port in (helper_port, up_port, ngx_port, gw_port, off_port):
        wait_port(port)
    time.sleep(0.3)
    return {"direct": up_port, "nginx": ngx_port, "gateway": gw_port, "store_off": off_port, "helper": helper_port}, gw, env


def url(port, path, token=TOKEN):
    sep = "&" if "?" in path else "?"
    return "http://127.0.0.1:%d%s%stoken=%s" % (port, path, sep, token)


# ---------------------------------------------------------------- wrk

def to_us(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def wrk(port, connections, seconds=SECONDS, path="/v1/models", script=None, token=TOKEN):
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds, "--latency", url(port, path, token)]
    if script:
        cmd[1:1] = ["-s", script]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    p50 = to_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    assert errors is None and socket_errors is None, out
    return {"p50_us": p50, "p99_us": p99, "rps": rps, "requests": requests}


def post_script(name, body_file):
    """A wrk script that POSTs the JSON in `body_file`."""
    script = os.path.join(WORK, name + ".lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                'local f = io.open("%s", "rb")\nwrk.body = f:read("*a")\nf:close()\n' % body_file)
    return script


# ---------------------------------------------------------------- streaming

def sse_once(port, n=50, gap=20, metered=False):
    """Sends one request; returns, per event, (arrival time in s from sending,
    delivery latency in s: arrival wall-clock minus the helper's send stamp).
    `metered`: the same stamped events as a streamed chat completion, which
    the gateway meters (asks for usage, reads it, hides the usage chunk)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if metered:
        body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        request = ("POST /v1/chat/completions?n=%d&gap_ms=%d&token=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\nConnection: close\r\n\r\n%s") % (n, gap, TOKEN, len(body), body)
    else:
        request = "GET /v1/sse?n=%d&gap_ms=%d&token=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (n, gap, TOKEN)
    started = time.perf_counter()
    s.sendall(request.encode())
    arrivals = []
    while len(arrivals) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        now, wall = time.perf_counter() - started, time.time()
        for sent in re.findall(rb'"sent_us":(\d+)', chunk):
            arrivals.append((now, wall - int(sent) / 1e6))
    s.close()
    return arrivals


def streaming(port, runs=15, metered=False):
    firsts, delays = [], []
    for _ in range(runs):
        events = sse_once(port, metered=metered)
        assert len(events) == 50, len(events)
        firsts.append(events[0][0])
        # Later events: how long each took from the helper's write to our read.
        delays.extend(latency for _, latency in events[1:])
    return {"first_ms": statistics.median(firsts) * 1e3, "event_ms": statistics.median(delays) * 1e3,
            "event_p99_ms": sorted(delays)[int(len(delays) * 0.99)] * 1e3}


# ---------------------------------------------------------------- large bodies

def large(port, gw_pid=None):
    upload_file = os.path.join(WORK, "upload.bin")
    if not os.path.exists(upload_file):
        with open(upload_file, "wb") as f:
            f.write(os.urandom(1 << 20) * 64)
    result = {}
    for name, cmd in (("upload", ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", "-H", "Content-Type: application/octet-stream",
                                  "--data-binary", "@" + upload_file, url(port, "/v1/upload")]),
                      ("download", ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url(port, "/v1/download")])):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        seconds = float(out[0])
        size = (64 << 20) if name == "upload" else int(out[1])
        assert size >= 64 << 20, out
        result[name + "_mb_s"] = size / seconds / 1e6
    if gw_pid:
        result["peak_rss_mib"] = rss_kib(gw_pid, "VmHWM") / 1024
    return result


# ---------------------------------------------------------------- big chat bodies

def big_chats(up_port, at_once=4, mib=30):
    """Four 30 MiB chat bodies (a long history of small messages) at once,
    through a fresh gateway whose token has `models` and limits, so that
    every body is read and parsed by the rules: the gateway's peak RSS."""
    body_file = os.path.join(WORK, "chat-30mib.json")
    if not os.path.exists(body_file):
        message = {"role": "user", "content": "a short message of the long history, number %06d"}
        messages, size, i = [], 0, 0
        while size < mib << 20:
            m = dict(message, content=message["content"] % i)
            size += len(json.dumps(m)) + 1
            messages.append(m)
            i += 1
        with open(body_file, "w") as f:
            json.dump({"model": "gpt-4o-mini", "max_tokens": 16, "messages": messages}, f)
    tokens = os.path.join(WORK, "tokens-limited.json")
    with open(tokens, "w") as f:
        json.dump({"tokens": [{"name": "limited", "token": "bench-limited", "models": ["gpt-4o-mini*"],
                               "limits": {"requests_per_minute": 10000, "usd_per_month": 1000}}]}, f)
    port = free_port()
    work = os.path.join(WORK, "big")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL="http://127.0.0.1:%d" % up_port,
               TOKENS_FILE=tokens, RUST_LOG="warn")
    gw = start([GATEWAY], env=env, cwd=work)
    wait_port(port)
    before = rss_kib(gw.pid) / 1024
    began = time.monotonic()
    curls = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                               "-H", "Content-Type: application/json", "-H", "Authorization: Bearer bench-limited",
                               "--data-binary", "@" + body_file, "http://127.0.0.1:%d/v1/chat/completions" % port],
                              stdout=subprocess.PIPE, text=True) for _ in range(at_once)]
    outs = [c.communicate()[0].split() for c in curls]
    elapsed = time.monotonic() - began
    assert all(o[0] == "200" for o in outs), outs
    peak = rss_kib(gw.pid, "VmHWM") / 1024
    gw.send_signal(signal.SIGTERM)
    gw.wait(10)
    return {"bytes": os.path.getsize(body_file), "at_once": at_once, "idle_rss_mib": before, "peak_rss_mib": peak,
            "wall_s": elapsed, "request_s": statistics.median(float(o[1]) for o in outs)}


# ---------------------------------------------------------------- the LLM path

# A chat completion as OpenAI answers it (usage included), served as it is by nginx.
CHAT_ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the benchmark upstream. " * 4,
                                          "refusal": None, "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 812, "completion_tokens": 40, "total_tokens": 852,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_bench"})
LIMITED = "bench-limited"
SSE_EVENTS = 100


def chat_body(name, size, image=False):
    """A chat request of about `size` bytes: a history of messages, or one
    message with an inline (base64) image."""
    path = os.path.join(WORK, name + ".json")
    if image:
        picture = "A" * size
        body = {"model": "gpt-4o-mini", "max_tokens": 300, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + picture}}]}]}
    else:
        line = "A line of an ordinary conversation, long enough to be typical. "
        messages = [{"role": "system", "content": "You are a helpful assistant."}]
        while len(json.dumps(messages)) < size - 120:
            messages.append({"role": "user" if len(messages) % 2 else "assistant", "content": line * 3})
        body = {"model": "gpt-4o-mini", "max_tokens": 256, "messages": messages}
    with open(path, "w") as f:
        json.dump(body, f)
    return path


def llm_setup(helper_port):
    """The LLM workload's three paths: an upstream nginx that answers a chat
    completion with a fixed JSON body (and hands streams, `?n=`, to the
    helper), nginx proxying to it, and a gateway whose token has `models`
    and limits on the default SQLite store."""
    up, proxy, big, gw_port = free_port(), free_port(), free_port(), free_port()
    nginx("""
  upstream helper { server 127.0.0.1:%d; keepalive 64; }
  server {
    listen 127.0.0.1:%d;
    default_type application/json;
    client_max_body_size 0;
    client_body_buffer_size 16m;
    location = /v1/chat/completions {
      error_page 418 = @stream;
      if ($arg_n) { return 418; }
      return 200 '%s';
    }
    location @stream { proxy_pass http://helper; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }""" % (helper_port, up, CHAT_ANSWER), "llm-upstream")
    # Streams (`?n=`) come from the helper. So do the answers to big bodies,
    # on their own port (`big`): nginx's `return` does not read a request
    # body, and a big one unread breaks keep-alive.
    nginx(reverse_proxy("api", up, proxy) + reverse_proxy("helper", helper_port, big), "llm-proxy")
    gw, env = limited_gateway(up, gw_port, "llm")
    for port in (up, proxy, big):
        wait_port(port)
    return {"direct": up, "nginx": proxy, "gateway": gw_port, "helper": helper_port, "nginx_big": big}, gw, env


def limited_gateway(up_port, port, name, pool=0):
    """A gateway in front of `up_port` whose token has `models` and limits;
    with `pool`, an UPSTREAMS_FILE of that many upstreams (all the same
    server, one priority, equal weights) instead of UPSTREAM_URL."""
    tokens = os.path.join(WORK, "tokens-%s.json" % name)
    with open(tokens, "w") as f:
        json.dump({"tokens": [{"name": "limited", "token": LIMITED, "models": ["gpt-4o-mini*"],
                               "limits": {"requests_per_minute": 100000000, "usd_per_month": 100000000}},
                              {"name": "plain", "token": TOKEN}]}, f)
    work = os.path.join(WORK, name)
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL="http://127.0.0.1:%d" % up_port,
               TOKENS_FILE=tokens, RUST_LOG="info", LOG_FORMAT="json")
    if pool:
        upstreams = os.path.join(WORK, "upstreams-%s.json" % name)
        with open(upstreams, "w") as f:
            json.dump({"upstreams": [{"name": "u%d" % i, "base_url": "http://127.0.0.1:%d" % up_port,
                                      "key": "sk-bench-%d" % i} for i in range(pool)]}, f)
        del env["UPSTREAM_URL"]
        env["UPSTREAMS_FILE"] = upstreams
    gw = start([GATEWAY], env=env, cwd=work)
    wait_port(port)
    return gw, env


def llm(helper_port):
    """The LLM workload; every request carries the limited token."""
    ports, gw, _ = llm_setup(helper_port)
    T = LIMITED
    paths = ("direct", "nginx", "gateway")
    chat = post_script("chat", chat_body("chat-3k", 3 << 10))
    with open(os.path.join(WORK, "sse.json"), "w") as f:
        json.dump({"model": "gpt-4o-mini", "stream": True, "max_tokens": 256,
                   "messages": [{"role": "user", "content": "Count to a hundred."}]}, f)
    sse = post_script("sse", os.path.join(WORK, "sse.json"))
    vision = post_script("vision", chat_body("vision-8m", 8 << 20, image=True))
    sse_path = "/v1/chat/completions?n=%d&gap_ms=0" % SSE_EVENTS
    vision_path = "/v1/chat/completions"
    out = {}
    for p in paths:  # warm-up (and a check that every path answers)
        wrk(ports[p], 8, 2, "/v1/chat/completions", chat, T)
        wrk(ports[p], 8, 2, sse_path, sse, T)
    rounds = {p: [] for p in paths}
    # The floor: the same gateway and upstream, a `GET` (no body, so no
    # view, no meter) with a token without rules; the upstream answers it
    # alike. What the gateway adds there is its base path's (hyper's server
    # and client, the token check, the record, the access line).
    floor = {p: [] for p in paths}
    for _ in range(3):
        for p in paths:
            rounds[p].append(wrk(ports[p], 1, max(2, SECONDS // 2), "/v1/chat/completions", chat, T))
            floor[p].append(wrk(ports[p], 1, max(2, SECONDS // 2), "/v1/chat/completions", None, TOKEN))
    out["chat1"] = {p: medians(rounds[p]) for p in paths}
    out["floor1"] = {p: medians(floor[p]) for p in paths}
    out["chat64"] = {p: wrk(ports[p], 64, SECONDS, "/v1/chat/completions", chat, T) for p in paths}
    print("llm chat", out["chat1"], out["chat64"], flush=True)
    out["chat_cpu"] = {"nginx": cpu_per_request(ports["nginx"], nginx_workers("llm-proxy"), path="/v1/chat/completions", script=chat, token=T),
                       "gateway": cpu_per_request(ports["gateway"], [gw.pid], path="/v1/chat/completions", script=chat, token=T)}
    out["sse64"] = {p: wrk(ports[p], 64, SECONDS, sse_path, sse, T) for p in paths}
    out["sse_cpu"] = {"nginx": cpu_per_request(ports["nginx"], nginx_workers("llm-proxy"), path=sse_path, script=sse, token=T),
                      "gateway": cpu_per_request(ports["gateway"], [gw.pid], path=sse_path, script=sse, token=T)}
    print("llm sse", out["sse64"], out["sse_cpu"], flush=True)
    # 8 MiB bodies: a fresh gateway, so that its peak RSS is this run's.
    big_port = free_port()
    big_gw, _ = limited_gateway(ports["helper"], big_port, "vision")
    vports = {"direct": ports["helper"], "nginx": ports["nginx_big"], "gateway": big_port}
    for p in paths:
        wrk(vports[p], 4, 2, vision_path, vision, T)
    out["vision4"] = {p: wrk(vports[p], 4, SECONDS, vision_path, vision, T) for p in paths}
    out["vision_rss_mib"] = rss_kib(big_gw.pid, "VmHWM") / 1024
    out["vision_cpu"] = {"nginx": cpu_per_request(vports["nginx"], nginx_workers("llm-proxy"), connections=4, path="/v1/chat/completions", script=vision, token=T),
                         "gateway": cpu_per_request(big_port, [big_gw.pid], connections=4, path="/v1/chat/completions", script=vision, token=T)}
    print("llm vision", out["vision4"], out["vision_cpu"], out["vision_rss_mib"], flush=True)
    # The happy path through a pool of two upstreams against one: the same
    # limited token and chat body, interleaved rounds, the median of each.
    pool_port = free_port()
    pool_gw, _ = limited_gateway(ports["direct"], pool_port, "pool", pool=2)
    wrk(pool_port, 8, 2, "/v1/chat/completions", chat, T)
    pooled = {"one": [], "two": []}
    for _ in range(3):
        pooled["one"].append(wrk(ports["gateway"], 64, max(2, SECONDS // 2), "/v1/chat/completions", chat, T))
        pooled["two"].append(wrk(pool_port, 64, max(2, SECONDS // 2), "/v1/chat/completions", chat, T))
    out["pool64"] = {k: medians(v) for k, v in pooled.items()}
    print("llm pool", out["pool64"], flush=True)
    pool_gw.terminate()
    return out


def costs_query(up_port, tokens=100, days=30, models=3, requests=1_000_000, runs=20):
    """The console's `GET /v1/gateway/costs` over 30 days for 100 tokens and
    3 models, one row per token, model and day holding 1 million requests in
    all (the store keeps usage summed by day), on the default SQLite store."""
    import sqlite3
    work = os.path.join(WORK, "costs")
    os.makedirs(work, exist_ok=True)
    admin = "bench-console-admin"
    tokens_file = os.path.join(work, "tokens.json")
    with open(tokens_file, "w") as f:
        json.dump([{"name": "ops", "token": admin, "admin": True}], f)
    port = free_port()
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL="http://127.0.0.1:%d" % up_port,
               TOKENS_FILE=tokens_file, RUST_LOG="warn")
    gw = start([GATEWAY], env=env, cwd=work)  # makes the schema
    wait_port(port)
    gw.terminate()
    gw.wait()
    today = datetime.datetime.now(datetime.timezone.utc).date()
    # Each token busy 8 hours a day: 8 hourly rows per token, model and day.
    hours = 8
    per = requests // (tokens * days * models * hours)
    rows = [("t%03d" % t, (today - datetime.timedelta(days=d)).isoformat(), h, "gpt-4o-mini-%d" % m,
             per, per * 400, 0, per * 100, per * 120, 0, "default")
            for t in range(tokens) for d in range(days) for m in range(models) for h in range(9, 9 + hours)]
    db = sqlite3.connect(os.path.join(work, "usage.db"))
    db.executemany("INSERT INTO usage (token, day, hour, model, requests, input_tokens, cached_tokens, output_tokens,"
                   " usd_micros, estimated_requests, upstream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    gw = start([GATEWAY], env=env, cwd=work)
    wait_port(port)
    start_time = int(datetime.datetime.combine(today - datetime.timedelta(days=days - 1), datetime.time(),
                                               datetime.timezone.utc).timestamp())
    path = "/v1/gateway/costs?start_time=%d&bucket_width=1d&group_by=token,model&limit=%d" % (start_time, days)
    times = []
    for _ in range(runs):
        request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                         headers={"authorization": "Bearer " + admin})
        began = time.perf_counter()
        with urllib.request.urlopen(request) as r:
            body = r.read()
        times.append((time.perf_counter() - began) * 1e3)
    answer = json.loads(body)
    results = sum(len(b["results"]) for b in answer["data"])
    gw.terminate()
    gw.wait()
    return {"rows": len(rows), "requests": per * len(rows), "results": results, "bytes": len(body),
            "median_ms": statistics.median(times), "max_ms": max(times)}


def medians(runs):
    """Each figure of interleaved wrk rounds (dicts alike), as its median."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def added(out, case, path, q="p50_us"):
    return out[case][path][q] - out[case]["direct"][q]


def llm_targets(out):
    c1, c64, sse, v = out["chat1"], out["chat64"], out["sse64"], out["vision4"]
    chat_rps = c64["gateway"]["rps"] / c64["nginx"]["rps"]
    chat_cpu = out["chat_cpu"]["gateway"] / out["chat_cpu"]["nginx"]
    gw_add, ngx_add = added(out, "chat1", "gateway"), added(out, "chat1", "nginx")
    sse_cpu = out["sse_cpu"]["gateway"] / out["sse_cpu"]["nginx"]
    per_event = out["sse_cpu"]["gateway"] / SSE_EVENTS
    sse_rps = sse["gateway"]["rps"] / sse["nginx"]["rps"]
    v_cpu = out["vision_cpu"]["gateway"] / out["vision_cpu"]["nginx"]
    v_gw, v_ngx = added(out, "vision4", "gateway"), added(out, "vision4", "nginx")
    return [
        ("LLM, chat JSON with limits: req/s at 64 connections ≥ 0.5 × nginx", "%.0f vs %.0f (%.2f×)" % (c64["gateway"]["rps"], c64["nginx"]["rps"], chat_rps), chat_rps >= 0.5),
        ("LLM, chat JSON with limits: CPU per request ≤ 3 × nginx's", "%.1f µs vs %.1f µs (%.1f×)" % (out["chat_cpu"]["gateway"], out["chat_cpu"]["nginx"], chat_cpu), chat_cpu <= 3),
        ("LLM, chat JSON with limits: p50 added at 1 connection ≤ 2 × nginx's", "%+.0f µs vs %+.0f µs (%.1f×)" % (gw_add, ngx_add, gw_add / ngx_add if ngx_add > 0 else float("inf")),
         None if ngx_add <= 0 else gw_add <= 2 * ngx_add),
        ("LLM, chat JSON with limits: p99 at 1 connection < 1 ms", "%.2f ms" % (c1["gateway"]["p99_us"] / 1e3), c1["gateway"]["p99_us"] < 1000),
        ("LLM, SSE of %d events with limits: CPU per stream ≤ 3 × nginx's, under 0.5 µs per event" % SSE_EVENTS,
         "%.0f µs vs %.0f µs (%.1f×; %.2f µs per event)" % (out["sse_cpu"]["gateway"], out["sse_cpu"]["nginx"], sse_cpu, per_event), sse_cpu <= 3 and per_event < 0.5),
        ("LLM, SSE with limits: streams/s at 64 connections ≥ 0.5 × nginx", "%.0f vs %.0f (%.2f×)" % (sse["gateway"]["rps"], sse["nginx"]["rps"], sse_rps), sse_rps >= 0.5),
        ("LLM, 8 MiB chat body with limits: CPU per request ≤ 2 × nginx's", "%.2f ms vs %.2f ms (%.1f×)" % (out["vision_cpu"]["gateway"] / 1e3, out["vision_cpu"]["nginx"] / 1e3, v_cpu), v_cpu <= 2),
        ("LLM, 8 MiB chat body: p50 added at 4 connections ≤ 2 × nginx's", "%+.1f ms vs %+.1f ms" % (v_gw / 1e3, v_ngx / 1e3), None if v_ngx <= 0 else v_gw <= 2 * v_ngx),
        ("LLM, 8 MiB chat bodies, 4 at once: peak RSS < 100 MiB", "%.0f MiB" % out["vision_rss_mib"], out["vision_rss_mib"] < 100),
        ("Upstreams: chat req/s at 64 connections through a pool of two within 5% of one upstream",
         "%.0f vs %.0f (%+.1f%%)" % (out["pool64"]["two"]["rps"], out["pool64"]["one"]["rps"], pool_change(out)),
         pool_change(out) >= -5),
    ]


def pool_change(out):
    one, two = out["pool64"]["one"]["rps"], out["pool64"]["two"]["rps"]
    return (two / one - 1) * 100 if one else float("-inf")


def llm_tables(out):
    paths = ("direct", "nginx", "gateway")
    lines = [
        "## The LLM path, limits on",
        "",
        "`POST /v1/chat/completions` with a token that has `models` and `requests_per_minute` + `usd_per_month` limits, on the",
        "default SQLite store: every request is parsed into the rules' view, admitted, forwarded, its usage read from the",
        "answer and settled. The upstream is nginx answering a fixed chat completion with `usage` (and, for streams and",
        "big bodies, the mock upstream); nginx as the reference proxy in front of the same upstream.",
        "",
        "| path | chat p50 @1 | chat p99 @1 | added p50 @1 | chat req/s @64 | p50 @64 | p99 @64 | SSE streams/s @64 | 8 MiB p50 @4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in paths:
        c1, c64, sse, v = out["chat1"][p], out["chat64"][p], out["sse64"][p], out["vision4"][p]
        add = "-" if p == "direct" else "%+.0f µs" % added(out, "chat1", p)
        lines.append("| %s | %.0f µs | %.0f µs | %s | %.0f | %.0f µs | %.0f µs | %.0f | %.1f ms |" % (
            p, c1["p50_us"], c1["p99_us"], add, c64["rps"], c64["p50_us"], c64["p99_us"], sse["rps"], v["p50_us"] / 1e3))
    lines += [
        "",
        "| CPU per request (user + system, all threads) | nginx | gateway |",
        "|---|---|---|",
        "| chat JSON (3 KB body), 64 connections | %.1f µs | %.1f µs |" % (out["chat_cpu"]["nginx"], out["chat_cpu"]["gateway"]),
        "| SSE, %d chunked events, 64 connections | %.0f µs | %.0f µs |" % (SSE_EVENTS, out["sse_cpu"]["nginx"], out["sse_cpu"]["gateway"]),
        "| 8 MiB JSON body (an inline image), 4 connections | %.2f ms | %.2f ms |" % (out["vision_cpu"]["nginx"] / 1e3, out["vision_cpu"]["gateway"] / 1e3),
        "",
        "Peak RSS of a fresh gateway serving the 8 MiB bodies, 4 at once: %.0f MiB." % out["vision_rss_mib"],
        "",
        "The floor, at one connection, in the same rounds: a `GET` of the same path (no body, so no view and no meter) with a",
        "token without rules, through the same gateway to the same upstream. Added p50: the gateway %+.0f µs, nginx %+.0f µs"
        % (added(out, "floor1", "gateway"), added(out, "floor1", "nginx")),
        "(%.1f×); the limited chat above adds %+.0f µs against nginx's %+.0f µs." % (
            added(out, "floor1", "gateway") / max(added(out, "floor1", "nginx"), 1),
            added(out, "chat1", "gateway"), added(out, "chat1", "nginx")),
        "",
        "The same chat through a pool of two upstreams (`UPSTREAMS_FILE`, one priority, equal weights; both the same",
        "nginx) against one (`UPSTREAM_URL`), at 64 connections, the median of three interleaved rounds: %.0f req/s"
        % out["pool64"]["two"]["rps"],
        "against %.0f (%+.1f%%); p50 %.0f µs against %.0f µs." % (
            out["pool64"]["one"]["rps"], pool_change(out), out["pool64"]["two"]["p50_us"], out["pool64"]["one"]["p50_us"]),
        "",
    ]
    return lines


def memory_run(port, pid, total=3_000_000):
    """`total` requests at full speed (64 connections) through the bare
    gateway and its default store: RSS before and after."""
    before = rss_kib(pid) / 1024
    done, runs = 0, 0
    while done < total and runs < 20:
        done += wrk(port, 64, 30)["requests"]
        runs += 1
    time.sleep(1)  # the usage writer's last batch
    return {"requests": done, "before_mib": before, "after_mib": rss_kib(pid) / 1024, "peak_mib": rss_kib(pid, "VmHWM") / 1024}


# ---------------------------------------------------------------- cold start

def cold_start_local(up_port, runs=10):
    times = []
    tokens = os.path.join(WORK, "tokens.json")
    for _ in range(runs):
        port = free_port()
        env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL="http://127.0.0.1:%d" % up_port, TOKENS_FILE=tokens, RUST_LOG="warn")
        started = time.perf_counter()
        proc = subprocess.Popen([GATEWAY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=WORK)
        while True:
            try:
                with urllib.request.urlopen(url(port, "/v1/models"), timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.0005)
        times.append((time.perf_counter() - started) * 1e3)
        proc.terminate()
        proc.wait()
    return statistics.median(times)


EVENT = json.load(open(os.path.join(ROOT, "events", "function-url-get-models.json")))


def lambda_mode(up_port, extra_env, runs=5, warm=0):
    """A minimal Lambda Runtime API. Each run starts the release binary as the
    bootstrap and hands it 1 + `warm` Function URL events, one after another.
    Returns (median ms from process start until the first invocation's
    streamed response is posted, median ms from handing out a later event to
    its response being posted, or None without `warm`)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    event = json.dumps(dict(EVENT, rawQueryString="token=" + TOKEN)).encode()
    colds, warms = [], []
    for _ in range(runs):
        state = {"handed": [], "posted": [], "done": threading.Event(), "preludes": []}

        class Runtime(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as Lambda's (Go) Runtime API does

            def log_message(self, *a):
                pass

            def do_GET(self):
                if len(state["handed"]) > warm:
                    state["done"].wait(30)  # hold the next poll until we are done
                    return
                n = len(state["handed"]) + 1
                self.send_response(200)
                for k, v in (("Lambda-Runtime-Aws-Request-Id", "bench-%d" % n), ("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 60000)),
                             ("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:gw"),
                             ("Content-Type", "application/json"), ("Content-Length", str(len(event)))):
                    self.send_header(k, v)
                self.end_headers()
                state["handed"].append(time.perf_counter())
                self.wfile.write(event)

            def do_POST(self):
                # The streamed response: a JSON prelude, 8 NUL bytes, then the body.
                data = b""
                while True:
                    line = self.rfile.readline()
                    if not line:
                        break
                    size = int(line.strip().split(b";")[0] or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    data += self.rfile.read(size)
                    self.rfile.readline()
                state["posted"].append(time.perf_counter())
                state["preludes"].append(data.split(b"\0" * 8)[0])
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if len(state["posted"]) > warm:
                    state["done"].set()

        port = free_port()
        server = ThreadingHTTPServer(("127.0.0.1", port), Runtime)
        server.handle_error = lambda request, address: None  # the killed function's connection
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = dict(os.environ, AWS_LAMBDA_RUNTIME_API="127.0.0.1:%d" % port, AWS_LAMBDA_FUNCTION_NAME="gw", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
                   AWS_LAMBDA_FUNCTION_VERSION="1", UPSTREAM_URL="http://127.0.0.1:%d" % up_port, RUST_LOG="info")
        env.update(extra_env)
        env.pop("TOKENS_FILE", None)
        started = time.perf_counter()
        proc = subprocess.Popen([GATEWAY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=WORK)
        ok = state["done"].wait(60)
        proc.kill()
        proc.wait()
        server.shutdown()
        assert ok and all(b'"statusCode":200' in p.replace(b" ", b"") for p in state["preludes"]), state["preludes"]
        colds.append((state["posted"][0] - started) * 1e3)
        warms.extend((posted - handed) * 1e3 for handed, posted in zip(state["handed"][1:], state["posted"][1:]))
    return statistics.median(colds), (statistics.median(warms) if warms else None)


def local_round_trip(port, runs=500):
    """The median ms of `GET /v1/models` over one kept-alive connection, timed
    the way the Runtime API emulator times an invocation (Python, from writing
    the request to having read the whole response)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(runs + 20):
        started = time.perf_counter()
        conn.request("GET", "/v1/models?token=" + TOKEN)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        times.append((time.perf_counter() - started) * 1e3)
    conn.close()
    return statistics.median(times[20:])


def cpu_of(pids):
    """CPU ticks (user + system) of every thread of `pids`."""
    total = 0
    for pid in pids:
        for task in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/stat" % (pid, task)) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a thread that ended meanwhile
            total += int(fields[11]) + int(fields[12])
    return total


def cpu_per_request(port, pids, seconds=5, connections=64, path="/v1/models", script=None, token=TOKEN):
    """CPU time (user + system, all threads of `pids`) per request over a
    wrk run (64 connections unless said), in µs."""
    tick = os.sysconf("SC_CLK_TCK")
    before = cpu_of(pids)
    run = wrk(port, connections, seconds, path, script, token)
    used = cpu_of(pids) - before
    return used / tick * 1e6 / run["requests"]


def nginx_workers(name):
    """The worker pids of the nginx started as `name`."""
    with open(os.path.join(WORK, name + ".pid")) as f:
        master = f.read().strip()
    out = subprocess.run(["pgrep", "-P", master], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def moto_ssm():
    port = free_port()
    start(["moto_server", "-H", "127.0.0.1", "-p", str(port)])
    wait_port(port, 60)
    env = {"AWS_ENDPOINT_URL_SSM": "http://127.0.0.1:%d" % port, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_EC2_METADATA_DISABLED": "true", "TOKENS_SSM_PARAMETER": "/bench/tokens"}
    tokens = os.path.join(WORK, "tokens.json")
    subprocess.run([GATEWAY, "tokens", "push", "--ssm-parameter", "/bench/tokens", "--file", tokens], env=dict(os.environ, **env),
                   check=True, capture_output=True)
    return env


# ---------------------------------------------------------------- report

def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = open("/proc/meminfo").readline().split()[1]
    return "%s, %d cores, %.0f GiB RAM, %s %s" % (cpu, os.cpu_count(), int(mem) / 2**20, platform.system(), platform.release())


def versions():
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return nginx_v, wrk_v, rustc


def main():
    ports, gw, env = setup()
    if os.environ.get("BENCH_ONLY") == "llm":  # by hand, while working on the LLM path: figures only
        print(json.dumps(llm(ports["helper"]), indent=1))
        return
    if os.environ.get("BENCH_ONLY") == "costs":  # the console's costs query alone
        print(json.dumps(costs_query(ports["direct"]), indent=1))
        return
    paths = ("direct", "nginx", "gateway")
    idle_rss = rss_kib(gw.pid) / 1024
    results = {p: {} for p in paths}
    for p in paths:  # warm-up
        wrk(ports[p], 8, 2)
    # One connection: three interleaved rounds of shorter runs, the median
    # of each figure per path, so that a burst of other work on the shared
    # cores does not land on one path alone.
    rounds = {p: [] for p in paths}
    for _ in range(3):
        for p in paths:
            rounds[p].append(wrk(ports[p], 1, max(2, SECONDS // 2)))
    for p in paths:
        results[p][1] = medians(rounds[p])
        print("wrk c=1 %-8s %s (rounds: %s)" % (p, results[p][1], [r["p50_us"] for r in rounds[p]]), flush=True)
    for p in paths:
        results[p][64] = wrk(ports[p], 64)
        print("wrk c=64 %-8s %s" % (p, results[p][64]), flush=True)
    after_load_rss = rss_kib(gw.pid) / 1024
    peak_after_load = rss_kib(gw.pid, "VmHWM") / 1024
    cpu = {"nginx": cpu_per_request(ports["nginx"], nginx_workers("proxy")), "gateway": cpu_per_request(ports["gateway"], [gw.pid])}
    print("cpu per request", cpu, flush=True)
    wrk(ports["store_off"], 8, 2)
    store_off = wrk(ports["store_off"], 64)
    print("wrk c=64 store_off %s" % store_off, flush=True)
    stream = {p: streaming(ports[p]) for p in paths}
    metered = streaming(ports["gateway"], metered=True)
    print("streaming", stream, "metered", metered, flush=True)
    big = {"direct": large(ports["direct"]), "nginx": large(ports["nginx"]), "gateway": large(ports["gateway"], gw.pid)}
    print("large", big, flush=True)
    chats = big_chats(ports["direct"])
    print("big chats", chats, flush=True)
    cold_local = cold_start_local(ports["direct"])
    cold_bundled, warm = lambda_mode(ports["direct"], {}, warm=50)
    local_rt = local_round_trip(ports["gateway"])
    cold_ssm, _ = lambda_mode(ports["direct"], moto_ssm())
    warm_extra = warm - local_rt
    print("cold", cold_local, cold_bundled, cold_ssm, "warm", warm, "local", local_rt, flush=True)
    lm = llm(ports["helper"])
    mem = memory_run(ports["gateway"], gw.pid)
    print("memory", mem, flush=True)
    costs = costs_query(ports["direct"])
    print("costs", costs, flush=True)
    size = os.path.getsize(GATEWAY) / 2**20

    def overhead(conns, p, q="p50_us"):
        return results[p][conns][q] - results["direct"][conns][q]

    gw_ovh, ngx_ovh = overhead(1, "gateway"), overhead(1, "nginx")
    ratio = gw_ovh / ngx_ovh if ngx_ovh > 0 else float("inf")
    rps_ratio = results["gateway"][64]["rps"] / results["nginx"][64]["rps"]
    ttfe_extra = stream["gateway"]["first_ms"] - stream["direct"]["first_ms"]
    store_ratio = results["gateway"][64]["rps"] / store_off["rps"]
    metering_extra = metered["event_ms"] - stream["gateway"]["event_ms"]
    # None: the run cannot decide (a proxy measured faster than the direct path is noise).
    # "floor": the target is missed, the floor under it is held.
    verdict = lambda ok: ("**no verdict** (noise: a proxied path beat the direct one; run again)" if ok is None
                          else "**missed**; the floor is met" if ok == "floor" else "**met**" if ok else "**missed**")
    targets = [
        ("Added latency at p50, 1 connection, no higher than nginx's", "%.0f µs vs nginx %.0f µs (ratio %.2f)" % (gw_ovh, ngx_ovh, ratio),
         None if gw_ovh <= 0 or ngx_ovh <= 0 else gw_ovh <= ngx_ovh),
        ("Requests/s at 64 connections, usage store on, ≥ 1.0 × nginx (floor 0.8×)", "%.0f vs %.0f (%.2f×)" % (results["gateway"][64]["rps"], results["nginx"][64]["rps"], rps_ratio),
         rps_ratio >= 1.0 or ("floor" if rps_ratio >= 0.8 else False)),
        ("CPU time per proxied request no more than nginx's", "%.1f µs vs nginx %.1f µs" % (cpu["gateway"], cpu["nginx"]), cpu["gateway"] <= cpu["nginx"]),
        ("Lambda mode: process start → first invocation's response ≤ 25 ms", "%.1f ms" % cold_bundled, cold_bundled <= 25),
        ("Lambda mode: a warm invocation's added time over the local server's ≤ 0.3 ms", "%+.2f ms (%.2f vs %.2f ms)" % (warm_extra, warm, local_rt), warm_extra <= 0.3),
        ("Time to first SSE event ≤ direct + 1 ms", "+%.2f ms" % ttfe_extra, ttfe_extra <= 1.0),
        ("Requests/s at 64 connections with the SQLite usage store ≥ 0.8 × `USAGE_STORE=off`", "%.0f vs %.0f (%.2f×)" % (results["gateway"][64]["rps"], store_off["rps"], store_ratio), store_ratio >= 0.8),
        ("Added latency per SSE event, metered stream vs unmetered, within 0.1 ms", "%+.3f ms" % metering_extra, abs(metering_extra) <= 0.1),
        ("Cold start to first proxied 200 (local) < 50 ms", "%.1f ms" % cold_local, cold_local < 50),
        ("RSS after the load run < 30 MB", "%.1f MiB (peak %.1f MiB)" % (after_load_rss, peak_after_load), after_load_rss < 30),
        ("Four 30 MiB chat bodies at once, token with models and limits: peak RSS < 300 MiB", "%.0f MiB" % chats["peak_rss_mib"], chats["peak_rss_mib"] < 300),
    ] + llm_targets(lm) + [
        ("Memory: after %.1f million requests at full speed (default store), RSS < 50 MiB" % (mem["requests"] / 1e6),
         "%.1f MiB (before %.1f, peak %.1f)" % (mem["after_mib"], mem["before_mib"], mem["peak_mib"]), mem["after_mib"] < 50 and mem["requests"] >= 3e6),
    ]
    nginx_v, wrk_v, rustc = versions()
    lines = [
        "# Benchmarks",
        "",
        "Written by `scripts/bench` on %s. Machine: %s." % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine()),
        "Tools: %s; %s; %s. wrk runs last %d s each (at one connection: three interleaved rounds of half that, medians); load generator, proxies and upstream share the machine's cores." % (nginx_v, wrk_v, rustc, SECONDS),
        "",
        "Three paths do the same work: **direct** to the upstream (nginx serving a 1 KB JSON body and a 100 MB file, and proxying",
        "`/sse` and `/upload` to a small Rust helper, the mock upstream, `examples/mock_upstream.rs`), through **nginx** as a reverse proxy",
        "(upstream keep-alive, no buffering), and through the **gateway** (release build, local mode, tokens on: every",
        "request carries `?token=`, which the gateway checks and strips; every request is recorded in the default",
        "usage store, `sqlite:usage.db`). A second gateway with `USAGE_STORE=off` gives the store's cost.",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ] + ["| %s | %s | %s |" % (t, m, verdict(ok)) for t, m, ok in targets] + [
        "",
    ] + llm_tables(lm) + [
        "## Latency and throughput (`wrk --latency`, GET 1 KB JSON)",
        "",
        "| path | p50 @1 | p99 @1 | p50 @64 | p99 @64 | req/s @64 | overhead p50 @1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in paths:
        r1, r64 = results[p][1], results[p][64]
        ovh = "-" if p == "direct" else "%+.0f µs" % overhead(1, p)
        lines.append("| %s | %.0f µs | %.0f µs | %.0f µs | %.0f µs | %.0f | %s |" % (p, r1["p50_us"], r1["p99_us"], r64["p50_us"], r64["p99_us"], r64["rps"], ovh))
    lines += [
        "",
        "Gateway overhead ÷ nginx overhead at p50, 1 connection: **%.2f**." % ratio,
        "",
        "## Streaming (SSE, 50 events 20 ms apart, median of 15 runs)",
        "",
        "| path | time to first event | later events: send → receive, median | p99 | added vs direct (median) |",
        "|---|---|---|---|---|",
    ] + ["| %s | %.2f ms | %.3f ms | %.3f ms | %s |" % (
        p, stream[p]["first_ms"], stream[p]["event_ms"], stream[p]["event_p99_ms"],
        "-" if p == "direct" else "%+.3f ms" % (stream[p]["event_ms"] - stream["direct"]["event_ms"])) for p in paths] + [
        "",
        "Metering, through the gateway: the same stamped events as a streamed chat completion, which the gateway",
        "meters (adds `stream_options.include_usage`, reads each event for usage, removes the usage chunk):",
        "%.3f ms per event (p99 %.3f ms), time to first event %.2f ms; unmetered `/v1/sse`: %.3f ms." % (
            metered["event_ms"], metered["event_p99_ms"], metered["first_ms"], stream["gateway"]["event_ms"]),
        "",
        "## Usage store",
        "",
        "| gateway | req/s @64 | p50 @64 | p99 @64 |",
        "|---|---|---|---|",
        "| `sqlite:usage.db` (default; every request recorded) | %.0f | %.0f µs | %.0f µs |" % (results["gateway"][64]["rps"], results["gateway"][64]["p50_us"], results["gateway"][64]["p99_us"]),
        "| `USAGE_STORE=off` | %.0f | %.0f µs | %.0f µs |" % (store_off["rps"], store_off["p50_us"], store_off["p99_us"]),
        "",
        "## Large bodies (curl, one transfer each)",
        "",
        "| path | 64 MB upload | 100 MB download |",
        "|---|---|---|",
    ] + ["| %s | %.0f MB/s | %.0f MB/s |" % (p, big[p]["upload_mb_s"], big[p]["download_mb_s"]) for p in paths] + [
        "",
        "Gateway peak RSS after both transfers (the load runs included): %.1f MiB." % big["gateway"]["peak_rss_mib"],
        "",
        "## Big chat bodies, read by the rules",
        "",
        "%d chat completions at once, each a %.1f MiB JSON body (a history of small messages), through a fresh gateway" % (chats["at_once"], chats["bytes"] / 2**20),
        "whose token has `models` and limits (so each body is read, bounded by `MAX_INSPECTED_BODY_BYTES`, and parsed once",
        "into the rules' typed view; nothing else is built from it): peak RSS **%.0f MiB** (idle %.1f MiB); %.2f s for all four," % (chats["peak_rss_mib"], chats["idle_rss_mib"], chats["wall_s"]),
        "%.2f s per request (median, curl's total time)." % chats["request_s"],
        "",
        "## CPU per request (64 connections, 5 s wrk run)",
        "",
        "| proxy | CPU per request (user + system, all threads) |",
        "|---|---|",
        "| nginx (1 worker) | %.1f µs |" % cpu["nginx"],
        "| gateway | %.1f µs |" % cpu["gateway"],
        "",
        "Read from `/proc/<pid>/task/*/stat` before and after the run, divided by the requests wrk completed.",
        "",
        "## Cold start and Lambda mode",
        "",
        "| mode | time |",
        "|---|---|",
        "| local server, token file: process start → first proxied 200 | %.1f ms (median of 10) |" % cold_local,
        "| Lambda mode, bundled token list: process start → first response posted | %.1f ms (median of 5) |" % cold_bundled,
        "| Lambda mode, tokens from SSM (moto): the same | %.1f ms (median of 5) |" % cold_ssm,
        "| Lambda mode, warm invocation: event handed out → response posted | %.2f ms (median of 250) |" % warm,
        "| local server, the same request on a kept-alive connection | %.2f ms (median of 500) |" % local_rt,
        "",
        "Lambda mode runs the release binary against a minimal Runtime API emulator in `scripts/bench.py`: 1 + 50",
        "Function URL events per process, each `GET /v1/models` answered by the upstream, each response posted",
        "in streaming mode; the default logging (`RUST_LOG=info`, EMF on). Init includes reading the configuration,",
        "building the HTTP client and warming the upstream connection; with SSM, also loading the AWS",
        "configuration and one `GetParameter`. The local figure is timed the same way, in Python, from writing",
        "the request to having read the whole response.",
        "",
        "## The console's costs query",
        "",
        "`GET /v1/gateway/costs` for 30 daily buckets grouped by token and model, on the default SQLite store",
        "holding %d usage rows (100 tokens, 3 models, 8 busy hours a day for 30 days: %.1f million requests, summed" % (costs["rows"], costs["requests"] / 1e6),
        "by hour as the store keeps them), through the release binary: **%.1f ms** median of 20, %.1f ms at most;" % (costs["median_ms"], costs["max_ms"]),
        "%d results, %.0f KiB of JSON. The rows are already a rollup (per hour), so the cost is bounded by" % (costs["results"], costs["bytes"] / 1024),
        "tokens × models × hours, never by requests.",
        "",
        "## Footprint",
        "",
        "| what | value |",
        "|---|---|",
        "| binary (release, stripped) | %.1f MiB |" % size,
        "| idle RSS | %.1f MiB |" % idle_rss,
        "| RSS after the 64-connection runs | %.1f MiB (peak %.1f MiB) |" % (after_load_rss, peak_after_load),
        "| RSS after %.1f million more requests at full speed (64 connections, default store) | %.1f MiB (peak %.1f MiB) |" % (mem["requests"] / 1e6, mem["after_mib"], mem["peak_mib"]),
        "",
        "## Commands",
        "",
        "```sh",
        "scripts/bench                     # everything above; BENCH_SECONDS=N shortens the wrk runs",
        "wrk -t1 -c1 -d%ds --latency 'http://127.0.0.1:PORT/v1/models?token=bench-token'" % SECONDS,
        "wrk -t2 -c64 -d%ds --latency 'http://127.0.0.1:PORT/v1/models?token=bench-token'" % SECONDS,
        "```",
        "",
    ]
    notes_path = os.path.join(ROOT, "scripts", "bench-notes.md")
    if os.path.exists(notes_path):
        lines += [open(notes_path).read()]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(lines))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    try:
        main()
    finally:
        for proc in PROCS:
            proc.send_signal(signal.SIGTERM)
        for proc in PROCS:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(WORK, ignore_errors=True)
