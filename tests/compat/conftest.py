"""Fixtures: the mock OpenAI upstream and the real gateway binary, on free ports."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target", "debug", "chatgpt-gateway"))

GW_TOKEN = "gw-compat-Token-1"
KEYED_TOKEN = "gw-keyed-Token-2"
EXPIRED_TOKEN = "gw-expired-Token-3"
UPSTREAM_KEY = "sk-injected-compat-key"
CLIENT_KEY = "sk-client-own-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited early" % what)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not start" % what)


class Mock:
    def __init__(self, port):
        self.port = port
        self.url = "http://127.0.0.1:%d" % port

    def requests(self):
        with urllib.request.urlopen(self.url + "/_mock/requests") as r:
            return json.load(r)

    def last(self):
        return self.requests()[-1]

    def clear(self):
        urllib.request.urlopen(urllib.request.Request(self.url + "/_mock/requests", method="DELETE")).read()


@pytest.fixture(scope="session")
def mock():
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "compat", "mock_openai.py"), str(port)], stdout=subprocess.DEVNULL)
    wait_port(port, proc, "mock upstream")
    yield Mock(port)
    proc.terminate()
    proc.wait()


class Gateway:
    def __init__(self, port, log_path):
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.base_url = self.url + "/v1"
        self.log_path = log_path

    def logs(self):
        with open(self.log_path) as f:
            return f.read()


@pytest.fixture(scope="session")
def gateway(mock):
    """The gateway with three tokens: plain, one with an injected key, one expired."""
    tmp = tempfile.mkdtemp()
    tokens = os.path.join(tmp, "tokens.json")
    with open(tokens, "w") as f:
        json.dump({"tokens": [
            {"name": "compat", "token": GW_TOKEN},
            {"name": "keyed", "token": KEYED_TOKEN, "upstream_key": UPSTREAM_KEY},
            {"name": "expired", "token": EXPIRED_TOKEN, "expires": "2020-1-1 00:00"},
        ]}, f)
    port = free_port()
    log_path = os.path.join(tmp, "gateway.log")
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL=mock.url, TOKENS_FILE=tokens, LOG_FORMAT="json", RUST_LOG="info")
    env.update(json.loads(os.environ.get("GATEWAY_EXTRA_ENV", "{}")))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([BINARY], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    wait_port(port, proc, "gateway")
    yield Gateway(port, log_path)
    proc.terminate()
    proc.wait()
