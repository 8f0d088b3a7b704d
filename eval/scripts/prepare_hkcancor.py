#!/usr/bin/env python3
"""Writes eval/data/hkcancor.jsonl: HKCanCor utterances for the Cantonese bits-per-character task.

HKCanCor (Hong Kong Cantonese Corpus, CC BY 4.0) is shipped by `pycantonese==5.0.0`. This script
installs pycantonese (and its one dependency, rustling) from hash-pinned requirements
(eval/scripts/requirements-hkcancor.txt, `--require-hashes --no-deps`) into a virtual environment
at eval/.venv, then re-runs itself there to export the utterances. The output is git-ignored: the
corpus is not committed.

Text of an utterance, precisely (the BPC denominator counts the characters of this text):
- the words of the main tier, in order, as pycantonese gives them;
- CHAT punctuation becomes full-width Chinese punctuation: `,` -> `，`, `.` -> `。`, `?` -> `？`,
  `!` -> `！`; the truncation marker `-` is dropped;
- words are joined without spaces, except one space between two words that end/start with an
  ASCII letter or digit (code-mixed English such as `Orlando`);
- utterances with unintelligible material (`xxx`, `yyy`, `www`) are left out, and so are
  utterances with fewer than `--min-chars` characters (default 4).
Order: shuffled with a fixed seed (so that `--limit N` takes N utterances spread over the corpus,
and every run of the script gives the same file).

Usage: python3 eval/scripts/prepare_hkcancor.py [--out eval/data/hkcancor.jsonl] [--min-chars 4]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import venv
from pathlib import Path

EVAL_DIR = Path(__file__).resolve().parent.parent
VENV_DIR = EVAL_DIR / ".venv"
REQUIREMENTS = Path(__file__).resolve().parent / "requirements-hkcancor.txt"
SEED = 20250327
PUNCT = {",": "，", ".": "。", "?": "？", "!": "！"}
DROP = {"-"}
UNINTELLIGIBLE = {"xxx", "yyy", "www"}


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def ensure_venv() -> None:
    py = venv_python()
    marker = VENV_DIR / ".hkcancor-installed"
    if marker.exists() and marker.read_text() == REQUIREMENTS.read_text():
        return
    if not py.exists():
        venv.EnvBuilder(with_pip=True).create(VENV_DIR)
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps",
         "-r", str(REQUIREMENTS)],
        check=True,
    )
    marker.write_text(REQUIREMENTS.read_text())


def is_ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def utterance_text(words):
    """The written text of one utterance (see the module docstring), or None to leave it out."""
    out = []
    for w in words:
        if not w or w in DROP:
            continue
        if w.lower() in UNINTELLIGIBLE:
            return None
        w = PUNCT.get(w, w)
        if out and is_ascii_alnum(out[-1][-1]) and is_ascii_alnum(w[0]):
            out.append(" ")
        out.append(w)
    return "".join(out)


def export(out_path: Path, min_chars: int) -> None:
    import pycantonese  # only inside the venv

    corpus = pycantonese.hkcancor()
    rows = []
    for path, utts in zip(corpus.file_paths, corpus.utterances(by_file=True)):
        name = os.path.basename(path).removesuffix(".cha")
        for i, u in enumerate(utts):
            text = utterance_text([t.word for t in u.tokens])
            if text is None or len(text) < min_chars:
                continue
            rows.append({"id": f"{name}:{i}", "participant": u.participant, "text": text})
    random.Random(SEED).shuffle(rows)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    chars = sum(len(r["text"]) for r in rows)
    print(f"wrote {len(rows)} utterances, {chars} characters, to {out_path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(EVAL_DIR / "data" / "hkcancor.jsonl"))
    ap.add_argument("--min-chars", type=int, default=4)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        export(Path(args.out), args.min_chars)
        return
    ensure_venv()
    subprocess.run(
        [str(venv_python()), __file__, "--inner", "--out", args.out,
         "--min-chars", str(args.min_chars)],
        check=True,
    )


if __name__ == "__main__":
    sys.exit(main())
