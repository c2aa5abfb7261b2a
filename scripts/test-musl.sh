#!/usr/bin/env bash
# The static musl build: builds the library, the CLI and the demo once for
# x86_64-unknown-linux-musl with the `musl` profile (the release profile; only the crates of
# uniffi's binding generator, which none of them calls, are left unoptimised: see Cargo.toml),
# checks that the binaries are static (static-pie: no interpreter, no shared libraries) and
# that the static library is there, then runs the demo and a two-node CLI smoke test with those
# binaries. Installs what it needs on a fresh Debian machine: musl-tools (musl-gcc, which the
# bundled SQLite needs: compiled by gcc against glibc's headers it does not link with musl) and
# the Rust target (rustup). MURMUR_MUSL_PROFILE=release builds with the release profile itself.
# Usage: bash scripts/test-musl.sh        Prints "N passed, M failed" at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
PROFILE=${MURMUR_MUSL_PROFILE:-musl}  # release, generator crates unoptimised (Cargo.toml)
OUT=target/$TARGET/$PROFILE

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
finish() { printf '\n%d passed, %d failed\n' "$passed" "$failed"; [ "$failed" -eq 0 ]; exit $?; }

step "toolchain: musl-tools and the $TARGET target"
if ! command -v musl-gcc >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq musl-tools >/dev/null
fi
command -v musl-gcc >/dev/null && pass "musl-gcc present" || { fail "musl-gcc present"; finish; }
if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
rustup target list --installed | grep -qx "$TARGET" && pass "rust target $TARGET installed" \
    || { fail "rust target $TARGET installed"; finish; }

step "build: cargo build --profile $PROFILE --target $TARGET --lib --bin murmur --example demo"
start=$(date +%s)
if cargo build --profile "$PROFILE" --target "$TARGET" --lib --bin murmur --example demo; then
    pass "musl build ($(($(date +%s) - start)) s)"
else
    fail "musl build"
    finish
fi

step "what the musl target produces"
BIN=$OUT/murmur
DEMO=$OUT/examples/demo
for f in "$BIN" "$DEMO"; do
    hdr=$(readelf -hW "$f" 2>&1)
    prog=$(readelf -lW "$f" 2>&1)
    dyn=$(readelf -dW "$f" 2>&1)
    if grep -q 'Type:.*DYN' <<<"$hdr" && ! grep -q 'INTERP' <<<"$prog" \
        && ! grep -q '(NEEDED)' <<<"$dyn"; then
        pass "$f is a static-pie executable (no interpreter, no shared libraries)"
    else
        fail "$f is a static-pie executable: $(grep 'Type:' <<<"$hdr"; grep -c INTERP <<<"$prog") INTERP, $(grep -c '(NEEDED)' <<<"$dyn") NEEDED"
    fi
done
[ -f "$OUT/libmurmur.a" ] && pass "static library $OUT/libmurmur.a built" \
    || fail "static library $OUT/libmurmur.a built"
[ ! -e "$OUT/libmurmur.so" ] && pass "no cdylib for musl (cargo drops that crate type here)" \
    || fail "no cdylib for musl: found $OUT/libmurmur.so"

step "the demo, static binary"
if timeout 300 "$DEMO" >target/demo-musl.log 2>&1 && grep -q "new leader" target/demo-musl.log; then
    pass "musl demo ran and reported the failover"
else
    fail "musl demo (log: target/demo-musl.log)"
    tail -20 target/demo-musl.log
fi

step "two-node CLI smoke test, static binary"
if python3 scripts/cli-smoke.py "$BIN"; then pass "musl CLI smoke test"; else fail "musl CLI smoke test"; fi

finish
