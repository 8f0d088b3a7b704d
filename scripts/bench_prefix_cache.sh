#!/usr/bin/env bash
# Time to first token with a cached ~1,000-token prefix vs the same requests with the prefix
# cache off (cold), on one model, one stream at a time.
#
#   scripts/bench_prefix_cache.sh MODEL_ID [OUT_DIR]
#
# Prompts: the first PREFIX_CHARS characters of the LegCo speech in ../shared/data/documents
# (a fixed context, ~1,000 tokens) followed by different questions; 1 generated token each.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/bench_prefix_cache.sh MODEL_ID [OUT_DIR]}
OUT=${2:-bench/results/$(date +%Y-%m-%d)-$MODEL-prefix}
PREFIX_CHARS=${PREFIX_CHARS:-1400}
PORT=${PORT:-8183}
GOVLM=target/release/govlm
EVAL=${EVAL:-target/release/govlm-eval}
mkdir -p "$OUT"
python3 - "$OUT/prompts.jsonl" "$PREFIX_CHARS" <<'PY'
import json, sys
doc = open("../shared/data/documents/legco-smart-government-closing-speech.zh-Hant.txt", encoding="utf-8").read()
prefix = "以下是立法會會議上的發言。\n\n" + doc[: int(sys.argv[2])] + "\n\n問題："
questions = ["這篇發言的主題是甚麼？", "發言提到哪些政策？", "請用一句話總結。", "發言人是誰？",
             "發言中提到的數字有哪些？", "有甚麼未來計劃？", "發言的語氣如何？", "有哪些部門被提及？",
             "請列出三個重點。", "這對市民有甚麼影響？", "Summarise it in English.", "What is the main argument?"]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for q in questions:
        f.write(json.dumps({"text": prefix + q}, ensure_ascii=False) + "\n")
PY
# models.toml with this model only, prefix caching on or off.
mk_config() { # FILE on|off
  awk -v id="$MODEL" '/^\[\[models\]\]/{m=0; buf=$0; next} $1=="id"{v=$3; gsub(/"/,"",v); m=(v==id); if(m) print buf} m' models.toml >"$1.tmp"
  { echo "default_model = \"$MODEL\""; echo; cat "$1.tmp"; echo "prefix_caching = $2"; } >"$1"
  rm "$1.tmp"
  sed -i "s#gguf = \"models/#gguf = \"$PWD/models/#" "$1"
}
for mode in true false; do
  cfg="$OUT/models-prefix-$mode.toml"
  mk_config "$cfg" "$mode"
  "$GOVLM" serve --config "$cfg" --port "$PORT" >"$OUT/govlm-prefix-$mode.log" 2>&1 &
  PID=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && break; sleep 0.5; done
  "$EVAL" load --base-url "http://127.0.0.1:$PORT/v1" --model "$MODEL" --endpoint completions \
    --dataset jsonl --dataset-path "$OUT/prompts.jsonl" --concurrency 1 --num-requests 11 --warmup 1 \
    --output-tokens 1 --ignore-eos --server-name "govlm prefix_caching=$mode" --out "$OUT/prefix-$mode" --quiet >/dev/null
  kill $PID; wait $PID 2>/dev/null || true
done
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
lv = {m: json.loads((out / f"prefix-{m}" / "load.json").read_text())["levels"][0] for m in ("true", "false")}
warm, cold = lv["true"]["ttft_ms"]["p50"], lv["false"]["ttft_ms"]["p50"]
toks = lv["true"]["prompt_tokens_per_request"]["p50"]
line = f"prompt ~{toks:.0f} tokens: TTFT p50 cached prefix {warm:.0f} ms, cold {cold:.0f} ms, {cold/warm:.1f}x faster"
(out / "summary.md").write_text(line + "\n")
print(line)
PY
