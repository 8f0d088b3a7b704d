"""Loads govlm_hk_mc.jsonl (beside this file) for lm-evaluation-harness, without any download."""

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "govlm_hk_mc.jsonl"


def load_docs(**_kwargs):
    import datasets

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
