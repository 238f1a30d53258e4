#!/usr/bin/env bash
# Fault-scenario figures, median of several runs: runs the fault-layer scenarios
# (tests/fault_scenarios.rs) and the kernel-fault scenarios (tests/kernel_faults.rs; they need
# root, iproute2 and nftables, else they print "skipped") RUNS times and prints, per scenario,
# the median [min-max] of each timing and the worst lost / duplicates / max_active.
#
#   scripts/fault-figures.sh [RUNS]        (default 3; about 3 minutes per run on 2 cores)
#
# TETHER_FLAP_SECS shortens the flapping scenario (default 60 s). Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo build --release --tests -q
for i in $(seq 1 "$runs"); do
  echo "run $i of $runs" >&2
  cargo test --release -q --no-fail-fast --test fault_scenarios --test kernel_faults -- --nocapture 2>&1 \
    | grep -oE '(scenario|skipped) .*' | tee -a "$out" >&2 || true
done
python3 - "$out" "$runs" <<'PY'
import re, sys, statistics
from collections import defaultdict
path, runs = sys.argv[1], sys.argv[2]
times = defaultdict(lambda: defaultdict(list))
worst = defaultdict(lambda: defaultdict(int))
seen = defaultdict(int)
for line in open(path):
    m = re.match(r"scenario (\S+): (.*)", line)
    if not m:
        continue
    name, rest = m.groups()
    seen[name] += 1
    for k, v in re.findall(r"(\w+)=([\d.]+)s\b", rest):
        times[name][k].append(float(v))
    for k in ("lost", "duplicates", "max_active"):
        for v in re.findall(rf"\b{k}=(\d+)\b", rest):
            worst[name][k] = max(worst[name][k], int(v))
keys = ["detect", "down", "fenced", "failover", "converge", "offline", "drained"]
print(f"\nfault scenarios, median [min-max] of {runs} run(s)\n")
print("| scenario | runs | worst lost / dup / max active | " + " | ".join(keys) + " |")
print("| --- " * (3 + len(keys)) + "|")
for name in seen:
    cells = []
    for k in keys:
        v = times[name].get(k)
        cells.append("–" if not v else f"{statistics.median(v):.2f}s [{min(v):.2f}–{max(v):.2f}]")
    w = worst[name]
    print(f"| {name} | {seen[name]} | {w['lost']} / {w['duplicates']} / {w['max_active'] or 1} | " + " | ".join(cells) + " |")
PY
