#!/usr/bin/env bash
# Fuzzes every decoder that reads bytes from a peer, an operator or a file (see
# src/decoders.rs), each for a given number of executions, with libFuzzer through cargo-fuzz.
#
#   scripts/fuzz.sh                 # every target, 10 000 000 executions each
#   scripts/fuzz.sh 100000 link     # one target, 100 000 executions
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Corpora start from
# the seeds of `tether::decoders::seeds` and grow under fuzz/corpus/; a crash is saved under
# fuzz/artifacts/TARGET/ and ends the run with its path. The code is safe Rust, so the runs go
# without AddressSanitizer (twice as many executions per second); panics, overflows (debug
# assertions stay on) and timeouts are what they look for. Prints one line per target: its
# executions, time, and final corpus size and coverage.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-10000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frames envelope control link outbox checkpoint)
fi

TETHER_FUZZ_CORPUS="$PWD/fuzz/corpus" cargo test -q --test decoders write_fuzz_seeds -- --ignored >/dev/null

for t in "${targets[@]}"; do
  log="fuzz/artifacts/$t.log"
  mkdir -p "fuzz/artifacts/$t"
  start=$(date +%s)
  if ! cargo +nightly fuzz run -O --sanitizer none "$t" "fuzz/corpus/$t" -- \
      -runs="$runs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    echo "$t: FAILED after $(( $(date +%s) - start )) s; see $log and fuzz/artifacts/$t/" >&2
    tail -30 "$log" >&2
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  echo "$t: $execs executions in $(( $(date +%s) - start )) s, no crash; coverage $cov edges, corpus $corpus inputs"
done
