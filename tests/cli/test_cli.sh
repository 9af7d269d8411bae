#!/usr/bin/env bash
# End to end through the real `mohge` binary on a tiny generated corpus: prepare-data,
# train (with a checkpoint and --resume), eval, generate, bench, and the errors a user sees.
# Usage: test_cli.sh PATH/TO/mohge
set -euo pipefail
mohge="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

for d in 0 1 2; do
  for i in $(seq 1 300); do
    echo "The quick brown fox number $((i % 17)) jumps over the lazy dog $d."
  done > "$work/doc$d.txt"
done
"$mohge" prepare-data --text "$work"/doc*.txt --out "$work/data" --vocab 300 2> "$work/prep.log"
for f in train.bin val.bin tokenizer.model; do [[ -s "$work/data/$f" ]] || fail "prepare-data wrote no $f"; done

cat > "$work/spec.json" <<'JSON'
{ "name": "cli-tiny",
  "model": { "vocab_size": 300, "seq_len": 16, "layers": 2, "d_model": 32, "heads": 4,
             "ffn": { "kind": "mohge", "groups": 4, "experts_per_group": 2,
                      "widths": [8, 12, 20, 24], "top_groups": 2, "top_experts": 3,
                      "shared_experts": 1, "shared_width": 16 } },
  "data": { "train": "data/train.bin", "val": "data/val.bin" },
  "train": { "steps": 6, "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "eval_every": 3,
             "eval_batches": 2 },
  "resources": { "workers": 1, "device": "cpu" },
  "checkpoint": { "every": 3, "keep": 1 } }
JSON

# Stop after 3 steps, then resume to the end.
"$mohge" train --config "$work/spec.json" --storage "$work" --out "$work/run" --threads 1 \
  --stop-after 3 --quiet 2> "$work/train1.log"
"$mohge" train --config "$work/spec.json" --storage "$work" --out "$work/run" --threads 1 \
  --resume --quiet 2> "$work/train2.log"
steps=$(grep -c '"loss"' "$work/run/metrics.jsonl")
[[ "$steps" == 6 ]] || fail "metrics.jsonl has $steps step records, expected 6"
grep -q "validation loss" "$work/train2.log" || fail "train did not report the validation loss"
ckpt="$work/run/checkpoints/step-00000006"
[[ -f "$ckpt/model.safetensors" && -f "$ckpt/tokenizer.model" ]] || fail "no final checkpoint"
[[ $(ls "$work/run/checkpoints" | wc -l) == 1 ]] || fail "checkpoint.keep = 1 not honoured"

# A run folder with checkpoints is not silently overwritten.
if "$mohge" train --config "$work/spec.json" --storage "$work" --out "$work/run" 2> "$work/err"; then
  fail "train overwrote an existing run"
fi
grep -q -- "--resume" "$work/err" || fail "no hint to use --resume: $(cat "$work/err")"

out=$("$mohge" eval --checkpoint "$ckpt" --data "$work/data/val.bin" --batches 2 --batch-size 4 --threads 1)
echo "$out" | grep -q '"perplexity"' || fail "eval printed: $out"
echo "$out" | grep -q '"tokens":128' || fail "eval should score 2·4·16 = 128 tokens: $out"

text=$("$mohge" generate --checkpoint "$ckpt" --prompt "The quick" --tokens 8 --seed 3 --threads 1)
[[ "$text" == "The quick"* ]] || fail "generate printed: $text"

# One .safetensors file, as `mohge download` writes it: eval scores the same; generate needs
# --tokenizer, says so, and with it writes the same text.
cp "$ckpt/model.safetensors" "$work/one.safetensors"
out1=$("$mohge" eval --checkpoint "$work/one.safetensors" --data "$work/data/val.bin" --batches 2 --batch-size 4 --threads 1)
[[ "$out1" == "$out" ]] || fail "eval of the file printed $out1, of the folder $out"
set +e
"$mohge" generate --checkpoint "$work/one.safetensors" --prompt "The quick" --tokens 8 2> "$work/err"
code=$?
set -e
[[ $code == 2 ]] || fail "generate without --tokenizer on a file: exit code $code, expected 2"
grep -q -- "--tokenizer: is required with a single .safetensors file" "$work/err" || fail "message: $(cat "$work/err")"
text1=$("$mohge" generate --checkpoint "$work/one.safetensors" --tokenizer "$ckpt/tokenizer.model" \
        --prompt "The quick" --tokens 8 --seed 3 --threads 1)
[[ "$text1" == "$text" ]] || fail "generate from the file printed: $text1 (folder: $text)"

# A bad field fails before training, naming the field and the rule, exit code 2.
sed 's/"heads": 4/"heads": 3/' "$work/spec.json" > "$work/bad.json"
set +e
"$mohge" train --config "$work/bad.json" --storage "$work" --out "$work/bad" 2> "$work/err"
code=$?
set -e
[[ $code == 2 ]] || fail "bad spec exit code $code, expected 2"
grep -q "model.d_model: must be divisible by model.heads" "$work/err" || fail "message: $(cat "$work/err")"

# A file that is not a token file.
echo "not tokens" > "$work/data/junk.bin"
set +e
"$mohge" eval --checkpoint "$ckpt" --data "$work/data/junk.bin" 2> "$work/err"
code=$?
set -e
[[ $code != 0 ]] || fail "eval accepted a junk token file"
grep -q "header" "$work/err" || fail "junk file message: $(cat "$work/err")"

layer=$("$mohge" bench layer --config "$work/spec.json" --tokens 256 --threads 1)
echo "$layer" | grep -q '"fraction_of_ceiling"' || fail "bench layer printed: $layer"

# Two local worker processes train the same job to the same losses as the single process.
"$mohge" train --config "$work/spec.json" --storage "$work" --out "$work/run2" --workers 2 \
  --threads 1 --quiet 2> "$work/workers.log" || fail "train --workers 2: $(tail -5 "$work/workers.log")"
[[ -f "$work/run2/checkpoints/step-00000006/model.safetensors.index.json" ]] ||
  fail "no sharded checkpoint from 2 workers"
last() { grep '"loss"' "$1" | tail -n 1 | sed 's/.*"loss":\([0-9.e-]*\).*/\1/'; }
awk -v a="$(last "$work/run/metrics.jsonl")" -v b="$(last "$work/run2/metrics.jsonl")" \
  'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-5 * a) }' ||
  fail "2 workers ended at loss $(last "$work/run2/metrics.jsonl"), one process at $(last "$work/run/metrics.jsonl")"
out=$("$mohge" eval --checkpoint "$work/run2/checkpoints/step-00000006" --data "$work/data/val.bin" \
  --batches 2 --batch-size 4 --threads 1)
echo "$out" | grep -q '"perplexity"' || fail "eval of the sharded checkpoint printed: $out"

comm=$("$mohge" bench comm --world 2 --bytes 65536)
echo "$comm" | grep -q '"all_to_all_over_p2p"' || fail "bench comm printed: $comm"
balance=$("$mohge" bench balance --run "$work/run2" --workers 2 --skip 1)
echo "$balance" | grep -q '"imbalance_group_per_rank"' || fail "bench balance printed: $balance"
echo "PASS"
