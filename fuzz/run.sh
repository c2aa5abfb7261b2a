#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `bash fuzz/run.sh [seconds per target]` (default 10).
# Longer by hand (optimized build): `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> -- -max_total_time=600`.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build --dev -s none
targets=$(cargo fuzz list)
passed=0
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run --dev -s none "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"target/fuzz-$t.log" 2>&1 \
    || { echo "FAIL fuzz $t"; tail -30 "target/fuzz-$t.log"; exit 1; }
  echo "PASS fuzz $t ($(grep -o 'Done [0-9]* runs' "target/fuzz-$t.log" | tail -1))"
  passed=$((passed + 1))
done
echo "$passed passed, 0 failed"
