"""The official OpenAI Python SDK, pointed at the gateway, works unchanged."""

import time

import openai
import pytest
from conftest import CLIENT_KEY, EXPIRED_TOKEN, GW_TOKEN, KEYED_TOKEN, UPSTREAM_KEY


def client(gateway, **kw):
    kw.setdefault("api_key", CLIENT_KEY)
    kw.setdefault("default_query", {"token": GW_TOKEN})
    return openai.OpenAI(base_url=gateway.base_url, **kw)


def test_streamed_chat_completion_arrives_token_by_token(gateway, mock):
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    start = time.monotonic()
    arrivals, text = [], ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
            text += chunk.choices[0].delta.content
    assert text == "Hello from the mock!"
    # The mock sends a chunk every 200 ms; a buffering gateway would deliver them together.
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(gaps) == 4 and min(gaps) > 0.1, arrivals
    seen = mock.last()
    assert "token=" not in seen["target"]
    assert dict(seen["headers"])["authorization"] == "Bearer " + CLIENT_KEY


def test_gateway_token_as_api_key_with_injected_upstream_key(gateway, mock):
    c = openai.OpenAI(base_url=gateway.base_url, api_key=KEYED_TOKEN)
    models = c.models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini"]
    assert dict(mock.last()["headers"])["authorization"] == "Bearer " + UPSTREAM_KEY


def test_expired_token_is_an_authentication_error(gateway):
    c = client(gateway, default_query={"token": EXPIRED_TOKEN}, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        c.models.list()
    assert info.value.status_code == 401
    assert info.value.code == "token_expired"
    assert "expired" in info.value.message
