"""lm-evaluation-harness against `govlm serve`: the pinned `lm-eval` package, its
`local-completions` model, and a small local multiple-choice task (eval/tasks/lm_eval/, no
dataset download). Its accuracy must equal the accuracy computed here directly from our
/v1/completions prompt log-probabilities (echo), and its per-choice log-likelihoods must match.

Needs target/release/govlm, the Qwen model and its reference tokenizer (`make models`), and the
packages of tests/python/requirements-lm-eval.txt (installed with `--no-deps`, see the Makefile).
"""

import json
import math
import urllib.request
from pathlib import Path

import pytest

import govlm_server

ROOT = Path(__file__).resolve().parents[2]
MODEL_ID = "qwen2.5-coder-0.5b-instruct"
MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
TOKENIZER_DIR = ROOT / "models" / "reference" / "qwen"
TASK_DIR = ROOT / "eval" / "tasks" / "lm_eval"
TASK = "govlm_hk_mc"


@pytest.fixture(scope="module")
def base_url():
    assert (TOKENIZER_DIR / "tokenizer.json").is_file(), "reference tokenizer missing: run `make models`"
    models = {MODEL_ID: (govlm_server.model_path(MODEL_FILE), 2048)}
    with govlm_server.running(models, MODEL_ID, tag="govlm-lmeval-") as base:
        yield base


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def _continuation_loglik(base: str, context: str, continuation: str) -> float:
    """Sum of the prompt log-probabilities of the tokens of `continuation` after `context`
    (the tokens whose text offset is at or past the end of the context)."""
    out = _post(
        f"{base}/v1/completions",
        {"model": MODEL_ID, "prompt": context + continuation, "echo": True, "logprobs": 0,
         "max_tokens": 0, "temperature": 0},
    )
    lp = out["choices"][0]["logprobs"]
    n_ctx = len(context)
    picked = [l for off, l in zip(lp["text_offset"], lp["token_logprobs"]) if off >= n_ctx]
    assert picked and all(l is not None for l in picked), lp
    return sum(picked)


def test_lm_eval_accuracy_equals_direct_logprob_accuracy(base_url):
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    results = evaluator.simple_evaluate(
        model="local-completions",
        model_args=(
            f"model={MODEL_ID},base_url={base_url}/v1/completions,"
            f"tokenizer_backend=huggingface,tokenizer={TOKENIZER_DIR},"
            "num_concurrent=1,max_retries=1,tokenized_requests=True"
        ),
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(TASK_DIR)),
        log_samples=True,
        bootstrap_iters=0,
    )
    lm_acc = results["results"][TASK]["acc,none"]
    samples = results["samples"][TASK]

    docs = [json.loads(l) for l in (TASK_DIR / f"{TASK}.jsonl").read_text().splitlines() if l.strip()]
    assert len(samples) == len(docs)
    correct = 0
    by_id = {s["doc"]["id"]: s for s in samples}
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        ours = [_continuation_loglik(base_url, context, " " + c) for c in doc["choices"]]
        pick = max(range(len(ours)), key=lambda i: ours[i])
        correct += int(pick == doc["answer"])
        theirs = [r[0] for r in by_id[doc["id"]]["filtered_resps"]]
        theirs = [t[0] if isinstance(t, (list, tuple)) else t for t in theirs]
        for a, b in zip(ours, theirs):
            assert math.isclose(a, float(b), rel_tol=1e-4, abs_tol=1e-3), (doc["id"], ours, theirs)
    direct_acc = correct / len(docs)
    print(f"lm-eval acc {lm_acc}, direct acc {direct_acc} ({len(docs)} questions)")
    assert lm_acc == pytest.approx(direct_acc), (lm_acc, direct_acc)
