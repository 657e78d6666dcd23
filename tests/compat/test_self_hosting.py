"""Self-hosting as the original was deployed: the container image (built from
the Dockerfile, whose runtime stage is the one users get), `docker compose up`
with the original's appsettings.json mounted unchanged, and the systemd unit.

No image can be pulled here, so the base is a Debian bookworm root file system
made with debootstrap and imported (`GW_TEST_BASE_IMAGE`), and the binary is
the host's build (scripts/test puts the stripped debug binary the other
suites ran at target/image/; the release build is the sam artifact's, which
test_lambda_artifact.py runs), through the Dockerfile's test-only PREBUILT
argument. scripts/test installs docker.io, docker-compose and debootstrap and
starts dockerd; when Docker cannot run, these tests say why and are skipped.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, free_port

BASE = os.environ.get("GW_TEST_BASE_IMAGE", "chatgpt-gateway-test/bookworm:base")
IMAGE = "chatgpt-gateway:test"
PREBUILT = "target/image/chatgpt-gateway"
BINARY = os.path.join(ROOT, PREBUILT)

# The original's appsettings.json, as its README shows it (the token and time formats
# unchanged), pointed at the mock upstream.
APPSETTINGS = """{
  "Logging": {"LogLevel": {"Default": "Information", "Microsoft.AspNetCore": "Warning"}},
  "Tokens": [
    {"Token": "datatoken", "Expire": "2099-3-30 23:00"},
    {"Token": "expiredtoken", "Expire": "2023-3-30 23:00"}
  ],
  "AllowedHosts": "*",
  "ReverseProxy": {
    "Routes": {"route1": {"ClusterId": "cluster1", "Match": {"Path": "{**catch-all}"}}},
    "Clusters": {"cluster1": {"Destinations": {"destination1": {"Address": "%s/"}}}}
  }
}
"""


def sh(*cmd, check=True, timeout=600, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (" ".join(cmd), done.returncode, done.stdout, done.stderr))
    return done


def docker_problem():
    if shutil.which("docker") is None:
        return "docker is not installed"
    info = sh("docker", "info", check=False, timeout=30)
    if info.returncode != 0:
        return "dockerd is not running: " + (info.stderr.strip().splitlines() or ["?"])[-1]
    if sh("docker", "image", "inspect", BASE, check=False).returncode != 0:
        return "the base image %s is missing (scripts/test makes it with debootstrap)" % BASE
    if not os.path.exists(BINARY):
        return "no binary at %s (scripts/test puts it there)" % BINARY
    return None


@pytest.fixture(scope="session")
def image():
    problem = docker_problem()
    if problem:
        pytest.skip("Docker cannot run here: " + problem)
    sh("docker", "build", "--network", "host", "-t", IMAGE,
       "--build-arg", "BUILDER=" + BASE, "--build-arg", "RUNTIME=" + BASE,
       "--build-arg", "PREBUILT=" + PREBUILT, ROOT,
       env=dict(os.environ, DOCKER_BUILDKIT="0"))
    return IMAGE


def get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url, logs, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            return get(url, timeout=2)
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            time.sleep(0.1)
    raise AssertionError("no answer from %s:\n%s" % (url, logs()))


def container_logs(name):
    done = sh("docker", "logs", name, check=False)
    return done.stdout + done.stderr


@pytest.fixture
def workdir_with_appsettings(mock):
    here = tempfile.mkdtemp(prefix="gw-selfhost-")
    with open(os.path.join(here, "appsettings.json"), "w") as f:
        f.write(APPSETTINGS % mock.url)
    os.chmod(here, 0o755)
    os.chmod(os.path.join(here, "appsettings.json"), 0o644)
    yield here
    shutil.rmtree(here, ignore_errors=True)


def test_the_image_is_small_and_runs_as_non_root(image):
    inspect = json.loads(sh("docker", "image", "inspect", image).stdout)[0]
    config = inspect["Config"]
    assert config["User"] not in ("", "0", "root", "0:0"), config["User"]
    assert "/data" in (config.get("Volumes") or {}), config.get("Volumes")
    assert config.get("Healthcheck"), "no HEALTHCHECK"
    # The runtime stage's own layers: the binary and the certificates on the
    # base, nothing else (the binary here is the stripped debug build, about
    # twice the release build users get).
    base = json.loads(sh("docker", "image", "inspect", BASE).stdout)[0]["Size"]
    added = (inspect["Size"] - base) / 2**20
    binary = os.path.getsize(os.path.join(ROOT, "target", "image", "chatgpt-gateway")) / 2**20
    assert added < binary + 2, "the gateway's layers add %.1f MiB to a %.1f MiB binary" % (added, binary)


def test_it_refuses_to_run_as_an_open_proxy(image):
    # No token list mounted, on the container's public address.
    name = "gw-open-%d" % free_port()
    try:
        done = sh("docker", "run", "--name", name, "--network", "host",
                  "-e", "GATEWAY_LISTEN=0.0.0.0:%d" % free_port(), image, check=False, timeout=60)
    finally:
        sh("docker", "rm", "-f", name, check=False)
    assert done.returncode != 0
    assert "refusing to start" in done.stderr + done.stdout, done.stderr


def test_the_originals_appsettings_mount_works_and_docker_stop_drains(image, workdir_with_appsettings, mock):
    port = free_port()
    name = "gw-selfhost-%d" % port
    # --network host (no bridge on these machines): the container's 8080 is the host's `port`.
    sh("docker", "run", "-d", "--name", name, "--network", "host", "--health-interval", "1s",
       "-e", "GATEWAY_LISTEN=0.0.0.0:%d" % port,
       "-v", os.path.join(workdir_with_appsettings, "appsettings.json") + ":/app/appsettings.json:ro",
       image)
    try:
        root = "http://127.0.0.1:%d" % port
        logs = lambda: container_logs(name)
        status, body = wait_http(root + "/v1/models?token=datatoken", logs)
        assert status == 200, body
        assert mock.last()["target"] == "/v1/models", "?token= is not forwarded"
        status, body = get(root + "/v1/models?token=expiredtoken")
        assert status == 401 and json.loads(body)["error"]["code"] == "token_expired"
        # The image's HEALTHCHECK (run every second here) finds it serving.
        end = time.time() + 20
        health = None
        while time.time() < end:
            health = json.loads(sh("docker", "inspect", name).stdout)[0]["State"]["Health"]
            if health["Status"] == "healthy":
                break
            time.sleep(0.2)
        assert health and health["Status"] == "healthy", health
        # SSE unbuffered: the mock sends each event only once the one before
        # has arrived here (`step=1`), so a buffering container would time
        # out; and a `docker stop` during the stream lets it finish.
        r = urllib.request.urlopen(root + "/v1/sse?n=6&step=1&token=datatoken", timeout=10)
        first = r.readline()
        assert first.startswith(b"data: "), first
        mock.step()
        events = [first]
        stopper = subprocess.Popen(["docker", "stop", "-t", "20", name], stdout=subprocess.DEVNULL)
        for line in iter(r.readline, b""):
            if line.startswith(b"data: "):
                events.append(line)
                if b"[DONE]" not in line:
                    mock.step()
        assert len(events) == 7 and events[-1] == b"data: [DONE]\n", events
        assert stopper.wait(timeout=60) == 0
        state = json.loads(sh("docker", "inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, (state, logs())
        assert "shutting down" in logs()
    finally:
        sh("docker", "rm", "-f", name, check=False)


def test_compose_up_with_the_originals_layout(image, workdir_with_appsettings, mock):
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed")
    port = free_port()
    project = "gwselfhost%d" % port
    here = workdir_with_appsettings
    # compose.yaml as shipped, with only what this machine needs: the local
    # image instead of a build, host networking (no bridge here), a free port.
    text = open(os.path.join(ROOT, "compose.yaml")).read()
    assert '"1080:8080"' in text and "./appsettings.json:/app/appsettings.json:ro" in text
    text = text.replace("    build: .\n", "").replace("image: chatgpt-gateway", "image: " + image)
    text = re.sub(r"    ports:\n      - \"1080:8080\"\n",
                  "    network_mode: host\n    environment:\n      GATEWAY_LISTEN: 0.0.0.0:%d\n" % port, text)
    with open(os.path.join(here, "compose.yaml"), "w") as f:
        f.write(text)
    with open(os.path.join(here, "gateway.env"), "w") as f:
        f.write("UPSTREAM_API_KEY=sk-from-env-file\n")
    run = lambda *args, **kw: sh(compose, "-p", project, "-f", os.path.join(here, "compose.yaml"), *args, cwd=here, **kw)
    try:
        run("up", "-d")
        logs = lambda: run("logs", check=False).stdout
        status, body = wait_http("http://127.0.0.1:%d/v1/models?token=datatoken" % port, logs)
        assert status == 200, body
        assert ["authorization", "Bearer sk-from-env-file"] in mock.last()["headers"]
        # The usage store lives on the /data volume, and survives a restart.
        cid = run("ps", "-q").stdout.split()[0]
        sh("docker", "exec", cid, "bash", "-c", "echo kept > /data/probe")
        assert "usage.db" in sh("docker", "exec", cid, "ls", "/data").stdout.split()
        run("restart")
        cid = run("ps", "-q").stdout.split()[0]
        assert sh("docker", "exec", cid, "cat", "/data/probe").stdout.strip() == "kept"
        report = sh("docker", "exec", cid, "chatgpt-gateway", "usage", "report", "--json").stdout
        rows = json.loads(report)
        assert sum(r["requests"] for r in rows if r["token"].startswith("sha256:")) >= 1, rows
    finally:
        run("down", "-v", check=False)


def test_the_systemd_unit_verifies_and_is_sandboxed(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    binary = os.path.join(ROOT, "target", "debug", "chatgpt-gateway")
    unit = open(os.path.join(ROOT, "deploy", "chatgpt-gateway.service")).read()
    assert "ExecStart=/usr/local/bin/chatgpt-gateway\n" in unit
    # The unit as shipped, but for where the binary is on this machine.
    path = tmp_path / "chatgpt-gateway.service"
    path.write_text(unit.replace("ExecStart=/usr/local/bin/chatgpt-gateway", "ExecStart=" + binary))
    done = sh("systemd-analyze", "verify", str(path), check=False)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    for setting in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                    "StateDirectory=chatgpt-gateway", "KillSignal=SIGTERM", "EnvironmentFile=-"):
        assert setting in unit, setting
    security = sh("systemd-analyze", "security", "--offline=yes", str(path), check=False)
    exposure = re.search(r"Overall exposure level for .*: ([0-9.]+)", security.stdout + security.stderr)
    assert exposure and float(exposure.group(1)) < 2.0, security.stdout[-2000:]
