"""The deployable artifact that `sam build` makes (scripts/test runs it first,
with GATEWAY_TOKENS_BUNDLE=events/tokens.json):

- its bootstrap needs no glibc newer than Amazon Linux 2023's 2.34;
- the bundled token list is really inside it, and it reads it;
- it runs and proxies.
"""

import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, free_port, wait_port

AL2023_GLIBC = (2, 34)


def built_bootstrap():
    template = os.path.join(ROOT, ".aws-sam", "build", "template.yaml")
    if not os.path.exists(template):
        pytest.fail("no .aws-sam/build: run `sam build` first (scripts/test does)")
    text = open(template).read()
    # The built template points each function at its artifact directory.
    block = text.split("GatewayFunction:", 1)[1]
    code_uri = re.search(r"CodeUri:\s*(\S+)", block).group(1)
    path = os.path.join(ROOT, ".aws-sam", "build", code_uri, "bootstrap")
    assert os.access(path, os.X_OK), path
    return path


def test_bootstrap_runs_on_amazon_linux_2023():
    path = built_bootstrap()
    symbols = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True).stdout
    versions = {tuple(int(p) for p in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", symbols)}
    assert versions, "no glibc symbols found: is this a dynamic glibc binary?"
    highest = max(versions)
    size = os.path.getsize(path)
    print("bootstrap: %s bytes (%.1f MiB), highest GLIBC_%s" % (size, size / 2**20, ".".join(map(str, highest))))
    assert highest <= AL2023_GLIBC, "needs GLIBC_%s, AL2023 has 2.34" % ".".join(map(str, highest))


def test_bundled_token_list_is_in_the_artifact(mock):
    path = built_bootstrap()
    listed = subprocess.run([path, "tokens", "check", "--bundled"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "example" in listed.stdout and "gw-example-token" not in listed.stdout

    # Run it (local mode) from an empty directory with no token settings: it must use the bundle.
    port = free_port()
    env = {"PATH": os.environ["PATH"], "GATEWAY_LISTEN": "127.0.0.1:%d" % port, "UPSTREAM_URL": mock.url}
    proc = subprocess.Popen([path], env=env, cwd=tempfile.mkdtemp(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "bootstrap")
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/models?token=gw-example-token" % port) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen("http://127.0.0.1:%d/v1/models?token=not-bundled" % port)
        assert info.value.code == 401
    finally:
        proc.terminate()
        proc.wait()
