#!/usr/bin/env bash
# Load benchmark: govlm vs llama.cpp's llama-server on the same GGUF, same threads, same load.
#
#   scripts/bench_load.sh MODEL_ID [LEVELS] [OUT_DIR]
#
# MODEL_ID is a [[models]] id of models.toml. LEVELS defaults to 1,4,16,64 concurrent streams.
# Each level sends 2 x concurrency requests (at least 8) of ~INPUT_TOKENS synthetic prompt
# tokens and OUTPUT_TOKENS generated tokens (ignore_eos), streamed. Needs llama-server
# (LLAMA_SERVER, default /work/llama.cpp-build/bin/llama-server; build it with
# ../shared/bench/build-llama-cpp.sh). Also reports the peak RSS of our server (VmHWM).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/bench_load.sh MODEL_ID [LEVELS] [OUT_DIR]}
LEVELS=${2:-1,4,16,64}
OUT=${3:-bench/results/$(date +%Y-%m-%d)-$MODEL}
THREADS=${THREADS:-2}
INPUT_TOKENS=${INPUT_TOKENS:-64}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-64}
LLAMA_SERVER=${LLAMA_SERVER:-/work/llama.cpp-build/bin/llama-server}
PORT_OURS=${PORT_OURS:-8181}
PORT_LLAMA=${PORT_LLAMA:-8182}
GOVLM=target/release/govlm
EVAL=${EVAL:-target/release/govlm-eval}
GGUF=$(awk -v id="$MODEL" '/^\[\[models\]\]/{m=0} $1=="id"{gsub(/"/,"",$3); m=($3==id)} m && $1=="gguf"{gsub(/"/,"",$3); print $3}' models.toml)
[ -n "$GGUF" ] || { echo "model $MODEL has no gguf path in models.toml" >&2; exit 1; }
mkdir -p "$OUT"

wait_up() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$1/v1/models" >/dev/null && return 0; sleep 0.5; done; echo "server on :$1 did not start" >&2; return 1; }
max_requests() { python3 -c "import sys; print(max(8, 2*max(int(x) for x in sys.argv[1].split(','))))" "$1"; }

run_levels() { # NAME PORT
  local name=$1 port=$2
  IFS=, read -ra lv <<<"$LEVELS"
  for c in "${lv[@]}"; do
    n=$(( c * 2 > 8 ? c * 2 : 8 ))
    "$EVAL" load --base-url "http://127.0.0.1:$port/v1" --model "$MODEL" --endpoint completions \
      --concurrency "$c" --num-requests "$n" --warmup 1 --dataset synthetic \
      --input-tokens "$INPUT_TOKENS" --output-tokens "$OUTPUT_TOKENS" --ignore-eos \
      --server-name "$name" --model-file "$GGUF" --out "$OUT/$name/c$c" --quiet
  done
}

echo "== govlm ($MODEL, $THREADS threads)"
RAYON_NUM_THREADS=$THREADS "$GOVLM" serve --config models.toml --model "$MODEL" --port "$PORT_OURS" >"$OUT/govlm.log" 2>&1 &
OURS=$!
trap 'kill $OURS 2>/dev/null || true; [ -n "${LLAMA:-}" ] && kill $LLAMA 2>/dev/null || true' EXIT
wait_up "$PORT_OURS"
run_levels govlm "$PORT_OURS"
grep VmHWM "/proc/$OURS/status" | tee "$OUT/govlm-peak-rss.txt"
kill $OURS; wait $OURS 2>/dev/null || true

echo "== llama.cpp llama-server -np 16 ($THREADS threads)"
"$LLAMA_SERVER" -m "$GGUF" -t "$THREADS" -tb "$THREADS" -np 16 -c $(( 16 * (INPUT_TOKENS + OUTPUT_TOKENS + 64) )) \
  --alias "$MODEL" --port "$PORT_LLAMA" >"$OUT/llama-server.log" 2>&1 &
LLAMA=$!
wait_up "$PORT_LLAMA"
run_levels llama.cpp "$PORT_LLAMA"
kill $LLAMA; wait $LLAMA 2>/dev/null || true

python3 - "$OUT" "$LEVELS" <<'PY'
import json, sys, pathlib
out, levels = pathlib.Path(sys.argv[1]), sys.argv[2].split(",")
def tps(name, c):
    j = json.loads((out / name / f"c{c}" / "load.json").read_text())
    return j["levels"][0]
rows = ["| streams | govlm output tok/s | llama.cpp output tok/s | ratio | govlm TTFT p50 ms | llama.cpp TTFT p50 ms |", "|---|---|---|---|---|---|"]
for c in levels:
    a, b = tps("govlm", c), tps("llama.cpp", c)
    assert a["failed"] == 0 and b["failed"] == 0, (c, a["errors"], b["errors"])
    ta, tb = a["output_throughput"], b["output_throughput"]
    rows.append(f"| {c} | {ta:.1f} | {tb:.1f} | {ta/tb:.2f}x | {a['ttft_ms']['p50']:.0f} | {b['ttft_ms']['p50']:.0f} |")
(out / "summary.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
