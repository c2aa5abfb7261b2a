#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, the Rust unit and integration tests, and
# the examples; with MURMUR_TEST_MUSL=1 also the static musl build. It installs what it needs on
# a fresh machine. Usage: ./scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --all-targets -- -D warnings

step "rust tests"
cargo test --all-targets 2>&1 | tee target/rust-tests.log
# Doc tests (the API examples in rustdoc compile).
cargo test --doc

step "examples run offline and exit by themselves"
timeout 120 cargo run -q --example basic
timeout 300 cargo run -q --example demo | tee target/demo.log
grep -q "new leader" target/demo.log

step "C ABI: header, C and C++ examples, misuse test, valgrind"
bash scripts/test-c.sh

step "Python, Kotlin and Swift bindings"
bash scripts/test-bindings.sh

step "multi-host suite: real processes in network namespaces (needs root)"
command -v ip >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2; }
cargo build -q --bin murmur --example local_relay
python3 tests/netns/suite.py

step "fuzz targets, a short bounded run each (longer by hand: see fuzz/run.sh)"
bash fuzz/run.sh 5

# The static musl build adds a release build from scratch (see README, "A static binary"):
# too long for every run within the CI budget, so it runs only when asked for.
if [ "${MURMUR_TEST_MUSL:-0}" = 1 ]; then
    step "static musl build: CLI and demo in release, demo and two-node CLI smoke test"
    bash scripts/test-musl.sh
    step "all passed, the static musl build included"
else
    step "all passed; NOT RUN: the static musl build (MURMUR_TEST_MUSL=1 ./scripts/test-all.sh, or bash scripts/test-musl.sh)"
fi
