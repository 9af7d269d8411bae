#!/usr/bin/env bash
# The README's main command: set up, build, prepare the Brown corpus, train the small MoHGE
# model of deploy/jobs/brown-mohge.json with live progress (about 10-15 minutes on 2 cores),
# then evaluate and sample from the final checkpoint. A second run reuses the build and the
# prepared data and trains a new run next to the first.
#
# Environment: MOHGE_ROOT (storage root, default ./storage-root), MOHGE_THREADS (default: all
# cores), MOHGE_JOB (job spec, default deploy/jobs/brown-mohge.json).
set -euo pipefail
cd "$(dirname "$0")/.."
root="${MOHGE_ROOT:-storage-root}"
job="${MOHGE_JOB:-deploy/jobs/brown-mohge.json}"
threads="${MOHGE_THREADS:-0}"

deploy/install-deps.sh
deploy/build.sh
mohge=build/bin/mohge

if [[ ! -f "$root/datasets/brown/val.bin" ]]; then
  "$mohge" prepare-data --corpus brown --out "$root/datasets/brown" --vocab 4096
else
  echo "[quickstart] using the prepared corpus in $root/datasets/brown"
fi

run="$root/runs/$(basename "$job" .json)-$(date +%Y%m%d-%H%M%S)"
echo "[quickstart] training $job into $run"
"$mohge" train --config "$job" --storage "$root" --out "$run" --threads "$threads"

ckpt=$(ls -d "$run"/checkpoints/step-* | tail -n 1)
echo "[quickstart] mohge eval --checkpoint $ckpt --data $root/datasets/brown/val.bin"
"$mohge" eval --checkpoint "$ckpt" --data "$root/datasets/brown/val.bin" --threads "$threads"
echo "[quickstart] mohge generate --checkpoint $ckpt --prompt 'The jury said'"
"$mohge" generate --checkpoint "$ckpt" --prompt "The jury said" --tokens 60 --threads "$threads"
echo "[quickstart] metrics: $run/metrics.jsonl   checkpoints: $run/checkpoints/"
