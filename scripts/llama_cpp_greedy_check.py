#!/usr/bin/env python3
"""How many of the shared greedy reference prompts llama.cpp's own server reproduces here.

Not a test (llama.cpp is a benchmark tool, never a test dependency): it explains the parity
figures in inference/tests/forward_reference.rs. Usage, after building llama.cpp with
../shared/bench/build-llama-cpp.sh:

    scripts/llama_cpp_greedy_check.py LLAMA_SERVER MODEL.gguf [llama-server flags, e.g. -fa off]

Runs llama-server on port 8091 (2 threads, one slot, --no-repack), sends each reference prompt's
token ids with temperature 0 / top_k 1 / 32 tokens, and prints which outputs equal the reference.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

REF = os.path.join(os.path.dirname(__file__), "../../shared/data/reference/llama_cpp_greedy.jsonl")
PORT = 8091


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


def main():
    server, model, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    name = os.path.basename(model)
    refs = [json.loads(l) for l in open(REF) if l.strip()]
    refs = [r for r in refs if r["model_file"] == name]
    proc = subprocess.Popen([server, "-m", model, "-t", "2", "-np", "1", "-c", "4096", "--no-repack",
                             "--port", str(PORT)] + extra,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health")
                break
            except OSError:
                time.sleep(0.5)
        matched = 0
        for r in refs:
            out = post("/completion", {"prompt": r["prompt_token_ids"], "n_predict": 32, "temperature": 0,
                                       "top_k": 1, "cache_prompt": False, "return_tokens": True})
            ok = out["tokens"] == r["output_token_ids"]
            matched += ok
            print("match" if ok else "MISS ", repr(r["prompt"][:50]))
        print(f"{name} {' '.join(extra)}: {matched}/{len(refs)}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
