"""Fixtures: the mock OpenAI upstream, and the real gateway in two shapes:

- "local": the binary as a local server;
- "lambda": the same code in Lambda mode under `cargo lambda watch`, reached
  through its Function URL emulation (response streaming).

Both use one token list (written here) and the same mock upstream.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target", "debug", "chatgpt-gateway"))
# The mock OpenAI upstream: the one the Rust suites use (tests/it/common/mock.rs), as a program.
MOCK_BIN = os.environ.get("MOCK_BIN", os.path.join(ROOT, "target", "debug", "examples", "mock_upstream"))
# The mock's file content (GET .../files/ID/content): every byte value, 64 times.
FILE_BYTES = bytes(range(256)) * 64

GW_TOKEN = "gw-compat-Token-1"
KEYED_TOKEN = "gw-keyed-Token-2"
EXPIRED_TOKEN = "gw-expired-Token-3"
UPSTREAM_KEY = "sk-injected-compat-key"
CLIENT_KEY = "sk-client-own-key"
# The tokens of events/tokens.json, used by the Lambda event fixtures and docs.
EVENT_TOKEN = "gw-example-token"
EVENT_EXPIRED = "gw-expired-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 30
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

    def step(self):
        """Lets a `?step=1` stream send its next event."""
        request = urllib.request.Request(self.url + "/_mock/step", data=b"", method="POST")
        with urllib.request.urlopen(request) as r:
            r.read()


@pytest.fixture(scope="session")
def mock():
    port = free_port()
    proc = subprocess.Popen([MOCK_BIN, str(port)], stdout=subprocess.DEVNULL)
    wait_port(port, proc, "mock upstream")
    yield Mock(port)
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="session")
def workdir():
    path = tempfile.mkdtemp(prefix="gw-compat-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tokens_file(workdir):
    path = os.path.join(workdir, "tokens.json")
    with open(path, "w") as f:
        json.dump({"tokens": [
            {"name": "compat", "token": GW_TOKEN},
            {"name": "keyed", "token": KEYED_TOKEN, "upstream_key": UPSTREAM_KEY},
            {"name": "expired", "token": EXPIRED_TOKEN, "expires": "2020-1-1 00:00"},
            {"name": "example", "token": EVENT_TOKEN},
            {"name": "example-expired", "token": EVENT_EXPIRED, "expires": "2020-01-01T00:00:00Z"},
        ]}, f)
    return path


@pytest.fixture(scope="session")
def page_ports():
    """Two local origins for the browser check: one allowed by CORS, one not."""
    return free_port(), free_port()


class Target:
    """A running gateway: where to send requests, and its log."""

    def __init__(self, kind, root, log_path):
        self.kind = kind
        self.root = root
        self.base_url = root + "/v1"
        self.log_path = log_path

    def logs(self, until=None):
        """The log so far. The local server writes its lines within 20 ms
        of logging them, so this waits that long first, and with `until`,
        up to 5 s for that text to appear."""
        deadline = time.time() + 5
        while True:
            time.sleep(0.05)
            with open(self.log_path, errors="replace") as f:
                text = f.read()
            if until is None or until in text or time.time() > deadline:
                return text


@pytest.fixture(scope="session")
def gateway(mock, tokens_file, workdir, page_ports):
    """The binary as a local server, with CORS allowing the first page origin."""
    port = free_port()
    log_path = os.path.join(workdir, "gateway.log")
    env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAM_URL=mock.url, TOKENS_FILE=tokens_file,
               LOG_FORMAT="json", RUST_LOG="info", CORS_ALLOW_ORIGINS="http://127.0.0.1:%d" % page_ports[0])
    with open(log_path, "w") as log:
        proc = subprocess.Popen([BINARY], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    wait_port(port, proc, "gateway")
    yield Target("local", "http://127.0.0.1:%d" % port, log_path)
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="session")
def watch(mock, tokens_file, workdir):
    """The gateway in Lambda mode under `cargo lambda watch` (Function URL emulation)."""
    if shutil.which("cargo-lambda") is None:
        pytest.fail("cargo-lambda is not installed: scripts/test installs it (pip install cargo-lambda)")
    port = free_port()
    log_path = os.path.join(workdir, "cargo-lambda-watch.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        ["cargo", "lambda", "watch", "--ignore-changes", "--disable-cors", "-P", str(port),
         "--env-var", "UPSTREAM_URL=" + mock.url, "--env-var", "TOKENS_FILE=" + tokens_file,
         "--env-var", "RUST_LOG=info"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_port(port, proc, "cargo lambda watch")
    root = "http://127.0.0.1:%d/lambda-url/chatgpt-gateway" % port
    # The first invocation compiles and starts the function.
    deadline = time.time() + 600
    while True:
        try:
            urllib.request.urlopen(root + "/v1/models?token=" + GW_TOKEN, timeout=600).read()
            break
        except (urllib.error.URLError, ConnectionError) as e:
            if time.time() > deadline:
                raise RuntimeError("cargo lambda watch never answered: %s" % e)
            time.sleep(0.2)
    yield Target("lambda", root, log_path)
    os.killpg(proc.pid, 15)
    proc.wait()
    log.close()


@pytest.fixture(params=["local", "lambda"])
def target(request):
    """Each compatibility test runs against the local server and the Lambda emulator."""
    return request.getfixturevalue("gateway" if request.param == "local" else "watch")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under GATEWAY_TESTS_REQUIRE_ALL=1 (scripts/test, CI) a test that could
    not run fails, naming why: a skip is never counted as a pass there."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("GATEWAY_TESTS_REQUIRE_ALL") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} was not run, and scripts/test runs every test: {reason}"
