"""The official OpenAI Node SDK (npm `openai`), driven through node's test
runner, against the local server and under `cargo lambda watch`."""

import os
import subprocess

from conftest import CLIENT_KEY, EXPIRED_TOKEN, GW_TOKEN, KEYED_TOKEN, ROOT, UPSTREAM_KEY

NODE_DIR = os.path.join(ROOT, "tests", "compat", "node")


def test_node_sdk_suite(target, mock):
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "openai")), "run npm ci in tests/compat/node (scripts/test does)"
    env = dict(os.environ, GATEWAY_BASE_URL=target.base_url, MOCK_URL=mock.url, GW_TOKEN=GW_TOKEN, KEYED_TOKEN=KEYED_TOKEN,
               EXPIRED_TOKEN=EXPIRED_TOKEN, UPSTREAM_KEY=UPSTREAM_KEY, CLIENT_KEY=CLIENT_KEY)
    proc = subprocess.Popen(["node", "--test", "--test-reporter=spec", "--test-timeout=60000", "sdk.test.mjs"], cwd=NODE_DIR,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("the Node suite hung:\n" + out[-6000:] + err[-2000:] + "\n" + target.logs()[-4000:])
    run = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "ℹ pass 14" in run.stdout and "ℹ fail 0" in run.stdout, run.stdout[-2000:]
