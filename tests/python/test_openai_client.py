"""End-to-end tests of `govlm serve` driven by the official `openai` Python client.

Starts target/release/govlm (build it first: `make build`) on a free port with a test
models.toml holding SmolLM2 (fast, English) and the default Qwen model (Chinese cases).
"""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

import govlm_server

ROOT = Path(__file__).resolve().parents[2]
SMOL = "smollm2"
QWEN = "qwen2.5-coder-0.5b-instruct"
# id -> (model file, context length)
MODELS = {
    SMOL: ("SmolLM2-135M-Instruct.Q4_1.gguf", 2048),
    QWEN: ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 4096),
}


@pytest.fixture(scope="session")
def server():
    models = {mid: (govlm_server.model_path(f), ctx) for mid, (f, ctx) in MODELS.items()}
    with govlm_server.running(models, SMOL) as base:
        yield base


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0, timeout=300)


def test_models_list(client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {SMOL, QWEN}
    assert client.models.retrieve(SMOL).id == SMOL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_stream_equals_non_stream(client):
    kwargs = dict(
        model=SMOL,
        messages=[{"role": "system", "content": "You are concise."}, {"role": "user", "content": "What is rain?"}],
        temperature=0,
        max_tokens=24,
    )
    full = client.chat.completions.create(**kwargs)
    text = full.choices[0].message.content
    assert text
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.id.startswith("chatcmpl-")
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens


def test_chinese_reply_streamed_without_replacement_chars(client):
    kwargs = dict(
        model=QWEN,
        messages=[{"role": "user", "content": "请用中文简单介绍一下北京。"}],
        temperature=0,
        max_tokens=32,
    )
    text = client.chat.completions.create(**kwargs).choices[0].message.content
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text
    assert "\ufffd" not in text
    deltas = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
    assert all("\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) == text


def test_length_usage_and_n2(client):
    r = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        temperature=0.8,
        seed=5,
        n=2,
        max_tokens=6,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 12


def test_seed_reproducible(client):
    kwargs = dict(
        model=SMOL, messages=[{"role": "user", "content": "Name a fruit."}], temperature=1.0, seed=77, max_tokens=12
    )
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_errors_raise_client_exceptions(client):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOL, messages=msgs, temperature=-1)
    assert "temperature" in str(e.value)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOL, messages=msgs, max_tokens=-5)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOL, messages=[{"role": "wizard", "content": "hi"}])
    assert e.value.body["param"] == "messages[0].role"
    assert "wizard" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOL, messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=msgs)
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "hi " * 3000}], max_tokens=4)
    assert "2048" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SMOL, prompt="hi", suffix="end")
    assert e.value.body["param"] == "suffix"
    # Still serving.
    assert client.chat.completions.create(model=SMOL, messages=msgs, max_tokens=2).choices


def test_completions_echo_logprobs_scoring(client):
    prompt = "The capital of France is Paris"
    r = client.completions.create(model=SMOL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    c = r.choices[0]
    assert c.text == prompt
    lp = c.logprobs
    n = r.usage.prompt_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert r.usage.completion_tokens == 0


def test_completions_forms_and_stream(client):
    r = client.completions.create(model=SMOL, prompt=["Once upon a time", "The sky is"], max_tokens=5, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    first = r.choices[0].text
    single = client.completions.create(model=SMOL, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert single.choices[0].text == first
    assert single.id.startswith("cmpl-")
    streamed = client.completions.create(
        model=SMOL, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in streamed:
        if chunk.choices:
            parts.append(chunk.choices[0].text)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == first
    assert usage is not None and usage.prompt_tokens == single.usage.prompt_tokens


def test_raw_malformed_json_is_openai_shaped(server):
    req = urllib.request.Request(
        f"{server}/v1/chat/completions", data=b'{"model": ', headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    body = json.loads(e.value.read())
    assert set(body["error"]) >= {"message", "type", "param", "code"}
