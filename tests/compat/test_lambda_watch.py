"""Lambda mode under `cargo lambda watch`, the Lambda emulator users develop with.

The watch server turns HTTP calls on /lambda-url/chatgpt-gateway/... into
Function URL events and runs the real binary in Lambda mode (response
streaming), so this covers the whole event path: runtime API, event mapping,
streaming prelude and body.
"""

import hashlib
import io
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest
from conftest import ROOT, free_port, wait_port

EVENT_TOKEN = "gw-example-token"
EXPIRED = "gw-expired-token"


@pytest.fixture(scope="module")
def watch(mock):
    if shutil.which("cargo-lambda") is None:
        pytest.fail("cargo-lambda is not installed: scripts/test installs it with pip install cargo-lambda")
    port = free_port()
    log = open(os.path.join(ROOT, "target", "cargo-lambda-watch.log"), "w")
    proc = subprocess.Popen(
        ["cargo", "lambda", "watch", "--ignore-changes", "-P", str(port),
         "--env-var", "UPSTREAM_URL=" + mock.url,
         "--env-var", "TOKENS_FILE=" + os.path.join(ROOT, "events", "tokens.json"),
         "--env-var", "RUST_LOG=info"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_port(port, proc, "cargo lambda watch")
    base = "http://127.0.0.1:%d/lambda-url/chatgpt-gateway" % port
    # The first invocation compiles and starts the function; give it time.
    deadline = time.time() + 600
    while True:
        try:
            urllib.request.urlopen(base + "/v1/models?token=" + EVENT_TOKEN, timeout=600).read()
            break
        except (urllib.error.URLError, ConnectionError) as e:
            if time.time() > deadline:
                raise RuntimeError("cargo lambda watch never answered: %s" % e)
            time.sleep(1)
    yield base
    os.killpg(proc.pid, 15)
    proc.wait()
    log.close()


def test_streamed_chat_arrives_chunk_by_chunk(watch, mock):
    client = openai.OpenAI(base_url=watch + "/v1", api_key="sk-client", default_query={"token": EVENT_TOKEN})
    start = time.monotonic()
    arrivals, text = [], ""
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
            text += chunk.choices[0].delta.content
    assert text == "Hello from the mock!"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(gaps) == 4 and min(gaps) > 0.1, arrivals
    assert "token=" not in mock.last()["target"]


def test_audio_upload_arrives_byte_for_byte(watch):
    client = openai.OpenAI(base_url=watch + "/v1", api_key="sk-client", default_query={"token": EVENT_TOKEN})
    audio = bytes(range(256)) * 300 + b"\x00\xff" * 1000
    result = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", io.BytesIO(audio), "audio/wav"))
    assert result.text == "sha256:" + hashlib.sha256(audio).hexdigest()


def test_expired_token_gets_the_401_json(watch):
    request = urllib.request.Request(watch + "/v1/models?token=" + EXPIRED)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    assert info.value.code == 401
    assert info.value.headers["content-type"] == "application/json"
    body = info.value.read()
    assert b'"code":"token_expired"' in body, body
    client = openai.OpenAI(base_url=watch + "/v1", api_key="sk-client", default_query={"token": EXPIRED}, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as sdk:
        client.models.list()
    assert sdk.value.code == "token_expired"
