"""The official OpenAI Python SDK works unchanged through the gateway, apart from
base_url and the token: every endpoint family, errors, both auth modes and raw
responses; against the local server and under `cargo lambda watch`."""

import base64
import hashlib
import io
import time
import uuid

import openai
import pytest
from conftest import CLIENT_KEY, EXPIRED_TOKEN, FILE_BYTES, GW_TOKEN, KEYED_TOKEN, UPSTREAM_KEY


def client(target, **kw):
    kw.setdefault("api_key", CLIENT_KEY)
    kw.setdefault("default_query", {"token": GW_TOKEN})
    return openai.OpenAI(base_url=target.base_url, **kw)


def headers_of(request):
    return dict(request["headers"])


def test_models_list(target, mock):
    models = client(target).models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini"]
    seen = mock.last()
    assert seen["target"] == "/v1/models"
    assert headers_of(seen)["authorization"] == "Bearer " + CLIENT_KEY


def test_chat_completion(target):
    r = client(target).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello from the mock!"
    assert r.usage.total_tokens == 8


def test_chat_completion_streams_token_by_token(target, mock):
    # The mock sends each chunk after the first only when the test says so
    # (`?step=1`), and the test says so only once it holds the chunk before:
    # through a gateway that buffered, the first would never come, and the
    # SDK's read timeout would fail the test.
    stream = client(target, timeout=20, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_query={"step": "1"},
    )
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            mock.step()
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert "token=" not in mock.last()["target"]


def test_a_stream_without_include_usage_shows_no_usage_chunk(target):
    # The gateway asks the upstream for usage (to meter the stream) and hides
    # the extra chunk: every chunk this client sees has choices, none usage.
    chunks = list(client(target).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        metadata={"gap": "0.01"},
    ))
    assert chunks and all(c.choices for c in chunks), chunks
    assert all(c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.content == "Hello"


def test_a_stream_with_include_usage_gets_its_usage_chunk(target):
    chunks = list(client(target).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}, metadata={"gap": "0.01"},
    ))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5, chunks[-1]
    assert all(c.choices for c in chunks[:-1])


def test_responses_api_streams(target):
    deltas, done = [], None
    with client(target).responses.stream(model="gpt-4o-mini", input="hi") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                done = event.response
    assert "".join(deltas) == "Hi there"
    assert done is not None and done.output_text == "Hi there"


def test_embeddings(target):
    r = client(target).embeddings.create(model="text-embedding-3-small", input="hello")
    assert r.data[0].embedding == [0.1, 0.2, 0.3]


def test_audio_transcription_upload_is_byte_for_byte(target):
    audio = bytes(range(256)) * 300 + b"\r\n--not-a-boundary\r\n" + b"\x00\xff" * 1000
    r = client(target).audio.transcriptions.create(model="whisper-1", file=("speech.wav", io.BytesIO(audio), "audio/wav"))
    assert r.text == "sha256:" + hashlib.sha256(audio).hexdigest()


def test_file_content_download_is_binary_exact(target):
    content = client(target).files.content("file-abc123")
    assert content.content == FILE_BYTES


def test_image_generation(target):
    r = client(target).images.generate(model="gpt-image-1", prompt="a lighthouse")
    assert base64.b64decode(r.data[0].b64_json) == b"hello"


def test_gateway_401_is_an_authentication_error_with_our_message(target):
    c = client(target, default_query={"token": EXPIRED_TOKEN}, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        c.models.list()
    assert info.value.status_code == 401
    assert info.value.code == "token_expired"
    assert info.value.body["message"] == "gateway token expired"
    assert "gateway token expired" in str(info.value)
    with pytest.raises(openai.AuthenticationError) as info:
        client(target, default_query={}, max_retries=0).models.list()
    assert info.value.code == "invalid_token", "a client key that is not a gateway token is refused"


def test_upstream_429_is_retried_by_the_sdk(target, mock):
    key = str(uuid.uuid4())
    c = client(target, max_retries=2, default_headers={"x-mock-attempt-key": key})
    r = c.chat.completions.create(model="force-429", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello from the mock!"
    attempts = [q for q in mock.requests() if headers_of(q).get("x-mock-attempt-key") == key]
    assert len(attempts) == 2, "one 429, then one retry that succeeded"


def test_upstream_500_raises_the_upstream_message(target):
    with pytest.raises(openai.InternalServerError) as info:
        client(target, max_retries=0).chat.completions.create(model="force-500", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 500
    assert info.value.body["message"] == "The mock upstream failed on purpose."


def test_gateway_token_as_api_key_with_injected_upstream_key(target, mock):
    c = openai.OpenAI(base_url=target.base_url, api_key=KEYED_TOKEN)
    assert c.models.list().data[0].id == "gpt-4o-mini"
    seen = headers_of(mock.last())
    assert seen["authorization"] == "Bearer " + UPSTREAM_KEY
    assert KEYED_TOKEN not in str(mock.last())


def test_raw_response_sees_the_upstream_request_id(target):
    raw = client(target).models.with_raw_response.list()
    assert raw.headers["x-request-id"].startswith("req_mock_")
    assert raw.parse().data[0].id == "gpt-4o-mini"


def test_logs_hold_no_secret(target):
    # Runs after the tests above in this module (pytest keeps file order).
    text = target.logs(until='"message":"request"')
    assert '"message":"request"' in text
    for secret in (GW_TOKEN, KEYED_TOKEN, EXPIRED_TOKEN, UPSTREAM_KEY, CLIENT_KEY):
        assert secret not in text, secret


def test_a_stream_cut_midway_raises_instead_of_looking_complete(target):
    # The upstream drops the connection after two events: the gateway ends
    # the stream with an OpenAI-shaped error event (no [DONE]), which the
    # SDK raises, rather than handing back half an answer as a whole one.
    stream = client(target).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        metadata={"gap": "0.01", "cut": "2"},
    )
    text = ""
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    assert text == "Hello from", text
    assert "broke off" in str(raised.value), raised.value


class PoolGateway:
    """The gateway in front of a pool of upstreams (`UPSTREAMS_FILE`), its
    JSON log in a file; `attempts()` reads the access lines' attempts."""

    def __init__(self, entries, tokens_file, tmp_path, **env):
        import json
        import os
        import subprocess

        from conftest import BINARY, free_port, wait_port

        pool = tmp_path / "upstreams.json"
        pool.write_text(json.dumps({"upstreams": entries}))
        port = free_port()
        self.log_path = tmp_path / "gateway.log"
        env = dict(os.environ, GATEWAY_LISTEN="127.0.0.1:%d" % port, UPSTREAMS_FILE=str(pool),
                   TOKENS_FILE=tokens_file, LOG_FORMAT="json", USAGE_STORE="off", **env)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([BINARY], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=tmp_path)
        wait_port(port, self.proc, "the pool's gateway")
        self.sdk = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % port, api_key=GW_TOKEN, max_retries=0)

    def lines(self, n):
        """The first `n` access lines (written in order), waiting for them."""
        import json

        deadline = time.time() + 10
        while True:
            lines = [json.loads(l) for l in open(self.log_path)
                     if l.endswith("}\n") and '"message":"request"' in l]
            if len(lines) >= n or time.time() > deadline:
                return lines
            time.sleep(0.02)

    def log(self):
        return open(self.log_path).read()

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def attempts_of(line):
    return [(a["upstream"], a.get("status", a.get("error"))) for a in line["attempts"]]


def test_a_pool_fails_over_from_a_dead_upstream_without_the_sdk_noticing(mock, tokens_file, tmp_path):
    from conftest import free_port

    dead = free_port()  # nothing listens there
    gw = PoolGateway([
        {"name": "down", "base_url": "http://127.0.0.1:%d" % dead, "key": "sk-pool-down"},
        {"name": "mock", "base_url": mock.url, "key": "sk-pool-mock", "priority": 1},
    ], tokens_file, tmp_path)
    try:
        r = gw.sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from the mock!"
        assert headers_of(mock.last())["authorization"] == "Bearer sk-pool-mock"
        line = gw.lines(1)[-1]
        assert line["upstream"] == "mock", line
        assert attempts_of(line) == [("down", "upstream_unreachable"), ("mock", 200)], line
        assert "sk-pool" not in gw.log()
    finally:
        gw.close()


def test_every_way_an_upstream_fails_is_failed_over_and_remembered(mock, tokens_file, tmp_path):
    # One mock plays six upstreams (`/_fail/MODE` in each base_url), tried in
    # order before the one that answers. The SDK sees a plain answer.
    fails = ["429", "500", "reset", "silent", "401"]
    entries = [{"name": mode, "base_url": mock.url + "/_fail/" + mode, "key": "sk-pool-" + mode,
                "priority": i} for i, mode in enumerate(fails)]
    entries.append({"name": "good", "base_url": mock.url, "key": "sk-pool-good", "priority": 9})
    gw = PoolGateway(entries, tokens_file, tmp_path, UPSTREAM_MAX_ATTEMPTS="8", UPSTREAM_TIMEOUT_SECS="1")
    try:
        ask = lambda: gw.sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert ask().choices[0].message.content == "Hello from the mock!"
        assert headers_of(mock.last())["authorization"] == "Bearer sk-pool-good"
        first = gw.lines(1)[0]
        assert attempts_of(first) == [
            ("429", 429), ("500", 500), ("reset", "upstream_error"), ("silent", "upstream_timeout"),
            ("401", 401), ("good", 200)], first
        # The 429 asked for 60 s of rest, and the 401 killed its key: the
        # next request goes nowhere near either.
        assert ask().choices[0].message.content == "Hello from the mock!"
        second = gw.lines(2)[1]
        assert attempts_of(second) == [
            ("500", 500), ("reset", "upstream_error"), ("silent", "upstream_timeout"), ("good", 200)], second
        log = gw.log()
        assert "refused the gateway's key" in log and "sk-pool-" not in log
    finally:
        gw.close()


def test_a_stream_that_fails_before_its_first_token_is_failed_over_invisibly(mock, tokens_file, tmp_path):
    # Each failing upstream answers 200 and a role-only chunk, then closes or
    # falls silent: nothing was output, so the next upstream serves, and the
    # SDK reads one whole stream (no role chunk twice, nothing of the others).
    entries = [
        {"name": "closes", "base_url": mock.url + "/_fail/close-before-output", "key": "sk-pool-c"},
        {"name": "stalls", "base_url": mock.url + "/_fail/stall-before-output", "key": "sk-pool-s",
         "priority": 1},
        {"name": "good", "base_url": mock.url, "key": "sk-pool-good", "priority": 2},
    ]
    gw = PoolGateway(entries, tokens_file, tmp_path, UPSTREAM_FIRST_TOKEN_TIMEOUT_SECS="1")
    try:
        stream = gw.sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            metadata={"gap": "0.01"})
        chunks = list(stream)
        roles = [c for c in chunks if c.choices and c.choices[0].delta.role]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello from the mock!", text
        assert len(roles) <= 1, roles
        line = gw.lines(1)[0]
        assert attempts_of(line) == [
            ("closes", "stream_broke_before_output"), ("stalls", "stream_stalled_before_output"),
            ("good", 200)], line
        assert line["upstream"] == "good"
    finally:
        gw.close()
