#!/usr/bin/env bash
# The README's main command: set up, build, prepare the Brown corpus, start a local cluster
# (a coordinator and two CPU worker daemons on localhost), submit deploy/jobs/brown-mohge.json,
# print the dashboard URL and the admin token, and follow the job in the terminal until it
# ends (about 10-15 minutes on 2 cores). Ctrl-C stops the local cluster cleanly. A second run
# reuses the build, the prepared corpus and the cluster's database (the job is submitted with
# an Idempotency-Key, so a rerun follows the same job instead of starting a second one; set
# MOHGE_FRESH=1 to start over with a new database: earlier runs are moved to runs.before-<time>/).
#
# With MOHGE_EXPERIMENT=FILE it submits that experiment instead (a grid of jobs, DESIGN.md §16;
# deploy/experiments/paper-miniature.json reproduces the paper's comparisons, about 60 minutes
# on 2 cores), prints its comparison table every minute until every job has finished, and then
# the final table.
#
# Environment: MOHGE_ROOT (storage root, default ./storage-root), MOHGE_HTTP (default
# 127.0.0.1:8080), MOHGE_CONTROL (default 127.0.0.1:7070), MOHGE_JOB (job spec),
# MOHGE_EXPERIMENT (experiment file), MOHGE_WORKERS (default 2), MOHGE_THREADS (compute threads
# per worker, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
root="${MOHGE_ROOT:-storage-root}"
http="${MOHGE_HTTP:-127.0.0.1:8080}"
control="${MOHGE_CONTROL:-127.0.0.1:7070}"
job="${MOHGE_JOB:-deploy/jobs/brown-mohge.json}"
workers="${MOHGE_WORKERS:-2}"
threads="${MOHGE_THREADS:-1}"

deploy/install-deps.sh
deploy/build.sh
bin=build/bin

if [[ ! -f "$root/datasets/brown/val.bin" ]]; then
  "$bin/mohge" prepare-data --corpus brown --out "$root/datasets/brown" --vocab 4096
else
  echo "[quickstart] using the prepared corpus in $root/datasets/brown"
fi
if [[ "${MOHGE_FRESH:-0}" == 1 ]]; then
  rm -f "$root"/mohge.db "$root"/mohge.db-* "$root"/admin.token
  # The new database numbers jobs from 1 again: keep the earlier runs, out of the new ones' way.
  if [[ -d "$root/runs" ]]; then
    kept="$root/runs.before-$(date +%Y%m%d-%H%M%S)"
    mv "$root/runs" "$kept"
    echo "[quickstart] earlier runs moved to $kept"
  fi
fi
mkdir -p "$root/logs"

pids=()
stop_cluster() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    echo
    echo "[quickstart] stopping the local cluster"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_cluster INT TERM EXIT

"$bin/mohge-coordinator" --http "$http" --control "$control" --storage "$root" \
  >>"$root/logs/coordinator.log" 2>&1 &
pids+=($!)
url="http://$http"
for _ in $(seq 100); do
  curl -fs "$url/api/v1/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "$url/api/v1/healthz" >/dev/null || {
  echo "[quickstart] the coordinator did not start; see $root/logs/coordinator.log"
  exit 1
}
for ((i = 0; i < workers; i++)); do
  "$bin/mohge-worker" --coordinator "$control" --storage "$root" --name "cpu-$i" \
    --threads "$threads" >>"$root/logs/worker-$i.log" 2>&1 &
  pids+=($!)
done

export MOHGE_URL="$url" MOHGE_TOKEN
MOHGE_TOKEN=$(cat "$root/admin.token")

if [[ -n "${MOHGE_EXPERIMENT:-}" ]]; then
  exp="$MOHGE_EXPERIMENT"
  key="quickstart-exp-$(basename "$exp" .json)-$(sha256sum "$exp" | cut -c1-12)"
  submitted=$("$bin/mohge" experiment submit "$exp" --idempotency-key "$key")
  echo "[quickstart] $submitted"
  id=$(grep -o 'experiment [0-9]*' <<<"$submitted" | head -n 1 | cut -d' ' -f2)
  cat <<EOF

  Dashboard:   $url/#/experiments/$id   (paste the token into the field at the top right)
  Admin token: $MOHGE_TOKEN   (also in $root/admin.token)
  Logs:        $root/logs/   Runs: $root/runs/job-<id>/
  From another terminal: MOHGE_URL=$url MOHGE_TOKEN=<token> build/bin/mohge experiment show $id

EOF
  status=0
  "$bin/mohge" experiment show "$id" --follow --interval 60 >"$root/logs/experiment-$id.log" &
  follower=$!
  while kill -0 "$follower" 2>/dev/null; do
    line=$("$bin/mohge" experiment list |
      awk -v id="$id" '$1 == id { s = $4 " —"; for (i = 8; i <= NF; i++) s = s " " $i; print s }' || true)
    printf '\r[quickstart] experiment %s %s   ' "$id" "$line"
    sleep 15
  done
  wait "$follower" || status=$?
  echo
  "$bin/mohge" experiment show "$id"
  echo "[quickstart] the table as it evolved: $root/logs/experiment-$id.log"
  echo "[quickstart] the dashboard stays up until you press Ctrl-C: $url/#/experiments/$id"
  [[ $status == 0 ]] || echo "[quickstart] not every job of the experiment succeeded"
  wait "${pids[0]}"
  exit 0
fi

key="quickstart-$(basename "$job" .json)-$(sha256sum "$job" | cut -c1-12)"
submitted=$("$bin/mohge" submit "$job" --idempotency-key "$key")
echo "[quickstart] $submitted"
id=$(grep -o 'job [0-9]*' <<<"$submitted" | head -n 1 | cut -d' ' -f2)

cat <<EOF

  Dashboard:   $url/#/jobs/$id   (paste the token into the field at the top right)
  Admin token: $MOHGE_TOKEN   (also in $root/admin.token)
  Logs:        $root/logs/   Run: $root/runs/job-$id/
  From another terminal: MOHGE_URL=$url MOHGE_TOKEN=<token> build/bin/mohge jobs

EOF
# Follow the job: a progress line, then its final state.
field() { { grep -o "\"$1\":[^,}]*" <<<"$j" || true; } | head -n 1 | cut -d: -f2 | tr -d '"'; }
num() { local v; v=$(field "$1"); echo "${v:-0}"; }
# A figure with printf's FORMAT, or "–" while the job has not reported it yet.
fig() {
  local v
  v=$(field "$1")
  if [[ -z "$v" || "$v" == null ]]; then printf '–'; else printf "$2" "$v"; fi
}
while true; do
  j=$(curl -fs "$url/api/v1/jobs/$id" -H "Authorization: Bearer $MOHGE_TOKEN" || true)
  state=$(field state)
  printf '\r[quickstart] job %s %-10s step %s/%s  loss %s  val %s  %s tok/s  imbalance %s   ' \
    "$id" "${state:-?}" "$(num step)" "$(num steps)" "$(fig loss %.4f)" "$(fig val_loss %.4f)" \
    "$(fig tokens_per_s %.0f)" "$(fig imbalance %.3f)"
  case "$state" in SUCCEEDED | FAILED | CANCELED) break ;; esac
  sleep 5
done
echo
"$bin/mohge" logs "$id" | grep '\[event\]' || true
"$bin/mohge" checkpoints "$id" || true
echo "[quickstart] the dashboard stays up until you press Ctrl-C: $url/#/jobs/$id"
wait "${pids[0]}"
