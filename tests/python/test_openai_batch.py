"""The Batch API of `govlm serve` driven by the official `openai` Python client, unchanged:
files.create -> batches.create -> batches.retrieve until done -> files.content, plus list,
cancel and the client's error classes.

Starts target/release/govlm (build it first: `make build`) on a free port with SmolLM2 and a
temporary --data-dir. Input: the first calls of ../shared/data/hotline/dev.jsonl.
"""

import io
import json
import time
from pathlib import Path

import openai
import pytest

import govlm_server

ROOT = Path(__file__).resolve().parents[2]
SMOL = "smollm2"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HOTLINE = ROOT.parent / "shared" / "data" / "hotline" / "dev.jsonl"
# Guard against a hung batch (not a performance assertion).
MAX_POLLS = 6000
TERMINAL = {"completed", "failed", "cancelled", "expired"}


@pytest.fixture(scope="module")
def client():
    models = {SMOL: (govlm_server.model_path(SMOL_FILE), 2048)}
    with govlm_server.running(models, SMOL, data_dir=True, tag="govlm-pytest-batch-") as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=300)


def _hotline_requests(n: int) -> list:
    calls = [json.loads(line) for line in HOTLINE.read_text().splitlines() if line.strip()][:n]
    return [
        {
            "custom_id": call["id"],
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": SMOL,
                "messages": [
                    {"role": "system", "content": "Summarise the hotline call in one English sentence."},
                    {"role": "user", "content": call["transcript"]},
                ],
                "max_tokens": 16,
                "temperature": 0,
            },
        }
        for call in calls
    ]


def _upload(client, lines: list, name: str = "batch.jsonl"):
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch"), data


def _wait(client, batch_id: str):
    for _ in range(MAX_POLLS):
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not finish")


def test_batch_round_trip(client):
    requests = _hotline_requests(3)
    file, data = _upload(client, requests, "hotline.jsonl")
    assert file.object == "file" and file.purpose == "batch" and file.bytes == len(data)
    assert client.files.retrieve(file.id).filename == "hotline.jsonl"
    assert client.files.content(file.id).read() == data

    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "hotline-dev"},
    )
    assert batch.status == "validating"
    assert batch.metadata == {"job": "hotline-dev"}
    done = _wait(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 3
    assert done.request_counts.completed == 3
    assert done.request_counts.failed == 0
    assert done.error_file_id is None
    assert done.completed_at is not None and done.in_progress_at is not None

    text = client.files.content(done.output_file_id).text
    results = [json.loads(line) for line in text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(r["custom_id"] for r in requests)
    for r in results:
        assert r["error"] is None
        assert r["response"]["status_code"] == 200
        body = r["response"]["body"]
        assert body["object"] == "chat.completion"
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert body["usage"]["completion_tokens"] <= 16

    listed = [b.id for b in client.batches.list(limit=100).data]
    assert batch.id in listed
    assert file.id in [f.id for f in client.files.list(purpose="batch").data]


def test_bad_line_goes_to_the_error_file(client):
    requests = _hotline_requests(1)
    bad = json.loads(json.dumps(requests[0]))
    bad["custom_id"] = "bad-temperature"
    bad["body"]["temperature"] = "hot"
    file, _ = _upload(client, requests + [bad])
    done = _wait(client, client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert len(errors) == 1
    assert errors[0]["custom_id"] == "bad-temperature"
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "temperature"


def test_cancel_and_errors(client):
    requests = _hotline_requests(4)
    for r in requests:
        r["body"]["max_tokens"] = 300
        r["body"]["ignore_eos"] = True
    file, _ = _upload(client, requests)
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    done = _wait(client, batch.id)
    assert done.status == "cancelled"
    assert done.request_counts.completed + done.request_counts.failed < 4

    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_does_not_exist")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-does-not-exist")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id="file-does-not-exist", endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert e.value.body["param"] == "input_file_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert e.value.body["param"] == "purpose"
    deleted = client.files.delete(file.id)
    assert deleted.deleted and deleted.id == file.id
