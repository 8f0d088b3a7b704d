#!/usr/bin/env bash
# Interactive time to first token while a Batch API job runs, against the same figure idle.
#
#   scripts/bench_batch_priority.sh [MODEL_ID] [OUT_DIR]
#
# 1. idle: 8 interactive chat requests, one at a time; 2. a batch of BATCH_LINES hotline lines
# (../shared/data/hotline/dev.jsonl, repeated) is submitted through /v1/files + /v1/batches;
# 3. the same 8 interactive requests while the batch runs. Reports TTFT p50 both ways.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-0.5b-instruct}
OUT=${2:-bench/results/$(date +%Y-%m-%d)-$MODEL-batch-priority}
BATCH_LINES=${BATCH_LINES:-60}
PORT=${PORT:-8184}
GOVLM=target/release/govlm
EVAL=${EVAL:-target/release/govlm-eval}
mkdir -p "$OUT"
DATA=$(mktemp -d)
"$GOVLM" serve --config models.toml --model "$MODEL" --port "$PORT" --data-dir "$DATA" >"$OUT/govlm.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && break; sleep 0.5; done
interactive() { # NAME SEED (different prompts each run, so the prefix cache cannot help the second)
  "$EVAL" load --seed "$2" --base-url "http://127.0.0.1:$PORT/v1" --model "$MODEL" --endpoint chat --dataset synthetic \
    --input-tokens 64 --output-tokens 16 --ignore-eos --concurrency 1 --num-requests 8 --warmup 1 \
    --server-name "govlm $1" --out "$OUT/$1" --quiet >/dev/null
}
interactive idle 1
python3 - "$OUT/batch.jsonl" "$BATCH_LINES" "$MODEL" <<'PY'
import json, sys
calls = [json.loads(l) for l in open("../shared/data/hotline/dev.jsonl", encoding="utf-8")]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for i in range(int(sys.argv[2])):
        c = calls[i % len(calls)]
        body = {"model": sys.argv[3], "max_tokens": 96,
                "messages": [{"role": "system", "content": "Summarise this 1823 hotline call in two sentences."},
                             {"role": "user", "content": c["transcript"]}]}
        f.write(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}, ensure_ascii=False) + "\n")
PY
FILE=$(curl -sf "http://127.0.0.1:$PORT/v1/files" -F purpose=batch -F "file=@$OUT/batch.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
BATCH=$(curl -sf "http://127.0.0.1:$PORT/v1/batches" -H 'content-type: application/json' \
  -d "{\"input_file_id\":\"$FILE\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
sleep 5 # let the batch fill its running slots
interactive under-batch 2
STATUS=$(curl -sf "http://127.0.0.1:$PORT/v1/batches/$BATCH" | python3 -c 'import json,sys; b=json.load(sys.stdin); print(b["status"], b["request_counts"])')
python3 - "$OUT" "$STATUS" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
lv = {m: json.loads((out / m / "load.json").read_text())["levels"][0] for m in ("idle", "under-batch")}
a, b = lv["idle"]["ttft_ms"]["p50"], lv["under-batch"]["ttft_ms"]["p50"]
line = f"interactive TTFT p50 idle {a:.0f} ms, under a running batch {b:.0f} ms: {b/a:.2f}x (batch after the run: {sys.argv[2]})"
(out / "summary.md").write_text(line + "\n")
print(line)
PY
