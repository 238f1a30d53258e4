#!/usr/bin/env bash
# Foundation figures, measured with the real CLI against real node processes:
#   formation time of a 3-node and a 16-node cluster (`tether up --detach`),
#   detection after `partition --isolate` and after kill -9 (time until every peer reports
#   the node unreachable), and reconnection after `heal` (time until every pair is up).
# Each figure is the median of RUNS runs (default 5), with min and max.
# Usage: scripts/measure-cluster.sh [path/to/tether]   (default: target/release/tether)
# The bench (`cargo run --release -p tether-bench -- --faults`) measures detection too; this
# script adds formation of a 16-node cluster and reconnection.
set -euo pipefail
T=${1:-target/release/tether}
RUNS=${RUNS:-5}
T=$(realpath "$T")
work=$(mktemp -d)
trap 'for d in "$work"/*; do "$T" down --state-dir "$d" >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT

now_ms() { date +%s%3N; }
stats() { # name values...
  local name=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v n="$name" '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%-34s median %6d ms   min %6d   max %6d   (n=%d)\n", n, m, a[1], a[NR], NR}'
}

form3=(); form16=(); iso=(); heal=(); kill9=()
for i in $(seq 1 "$RUNS"); do
  d="$work/c3-$i"
  # the first run of a state dir creates certificates; formation is measured on a warm dir
  "$T" up --detach --state-dir "$d" >/dev/null; "$T" down --state-dir "$d" >/dev/null
  t0=$(now_ms); "$T" up --detach --state-dir "$d" >/dev/null; form3+=($(( $(now_ms) - t0 )))

  t0=$(now_ms); "$T" partition --isolate r2 --state-dir "$d" >/dev/null
  "$T" wait --state unreachable --node r1,l1 --peer r2 --timeout 10s --state-dir "$d" >/dev/null
  "$T" wait --state unreachable --node r2 --timeout 10s --state-dir "$d" >/dev/null
  iso+=($(( $(now_ms) - t0 )))

  t0=$(now_ms); "$T" heal --state-dir "$d" >/dev/null
  "$T" wait --state up --timeout 10s --state-dir "$d" >/dev/null
  heal+=($(( $(now_ms) - t0 )))

  pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$d/nodes/r2/node.json")
  t0=$(now_ms); kill -9 "$pid"
  "$T" wait --state unreachable --node r1,l1 --peer r2 --timeout 10s --state-dir "$d" >/dev/null
  kill9+=($(( $(now_ms) - t0 )))
  "$T" down --state-dir "$d" >/dev/null
done
for i in $(seq 1 "$RUNS"); do
  d="$work/c16-$i"
  "$T" up --detach --remote 12 --local 4 --state-dir "$d" >/dev/null; "$T" down --state-dir "$d" >/dev/null
  t0=$(now_ms); "$T" up --detach --remote 12 --local 4 --state-dir "$d" >/dev/null; form16+=($(( $(now_ms) - t0 )))
  "$T" down --state-dir "$d" >/dev/null
done
echo "machine: $(nproc) cores, $(uname -sr)"
stats "form 3 nodes (2 remote + 1 local)" "${form3[@]}"
stats "form 16 nodes (12 remote + 4 local)" "${form16[@]}"
stats "detect partition --isolate" "${iso[@]}"
stats "detect kill -9" "${kill9[@]}"
stats "reconnect after heal" "${heal[@]}"
