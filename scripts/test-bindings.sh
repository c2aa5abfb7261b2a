#!/usr/bin/env bash
# Tests the uniffi bindings as a user gets them: checks that the committed Kotlin and Swift
# sources are what uniffi-bindgen generates now, builds the packages with scripts/package.sh
# (one release build of the native library for glibc 2.17: the manylinux2014 wheel and the jar),
# installs the wheel into a clean virtualenv and runs pytest and the example there, compiles the
# Kotlin tests against the jar and runs them, the exit scenarios and the example from an empty
# directory with only the jar, JNA, kotlinx-coroutines and kotlin-stdlib on the classpath, and
# parses the Swift package (no Swift compiler here).
#
# Installs what is missing (see scripts/bindings-tools.sh). EXIT_RUNS (default 50) sets how many
# times each exit scenario runs, in Python and on the JVM.
#
# Usage: bash scripts/test-bindings.sh            run everything
#        bash scripts/test-bindings.sh --update   first rewrite the committed generated sources
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
UPDATE=0
[[ "${1:-}" == "--update" ]] && UPDATE=1
EXIT_RUNS=${EXIT_RUNS:-50}

step() { printf '\n== %s (%s s)\n' "$*" "$SECONDS"; }
PASSED=0
FAILED=0
SUMMARY=()
record() { # suite passed failed
    PASSED=$((PASSED + $2))
    FAILED=$((FAILED + $3))
    SUMMARY+=("$1: $2 passed, $3 failed")
}

step "tools"
source scripts/bindings-tools.sh
java -version 2>&1 | head -1
"$PY" -m maturin --version
"$KOTLIN/bin/kotlinc" -version 2>&1 | tail -1

step "build the bindgen (and the debug library it reads the interface from)"
cargo build --lib --bin uniffi-bindgen
LIB=$ROOT/target/debug/libmurmur.so

step "generated Kotlin and Swift sources are current"
GEN=$ROOT/target/bindings-gen
rm -rf "$GEN"
for lang in kotlin swift; do
    target/debug/uniffi-bindgen generate --no-format --library "$LIB" --language "$lang" \
        --out-dir "$GEN/$lang" >/dev/null
done
# generated file -> committed file
PAIRS=(
    "$GEN/kotlin/uniffi/murmur/murmur.kt:bindings/kotlin/src/main/kotlin/uniffi/murmur/murmur.kt"
    "$GEN/swift/murmur.swift:bindings/swift/Sources/Murmur/murmur.swift"
    "$GEN/swift/murmurFFI.h:bindings/swift/Sources/murmurFFI/murmurFFI.h"
    "$GEN/swift/murmurFFI.modulemap:bindings/swift/Sources/murmurFFI/module.modulemap"
)
stale=0
for pair in "${PAIRS[@]}"; do
    fresh=${pair%%:*} committed=${pair#*:}
    if ((UPDATE)); then
        mkdir -p "$(dirname "$committed")"
        cp "$fresh" "$committed"
    fi
    if cmp -s "$fresh" "$committed"; then
        echo "current: $committed"
    else
        echo "STALE: $committed differs from freshly generated $fresh" >&2
        diff -u "$committed" "$fresh" | head -20 >&2 || true
        stale=$((stale + 1))
    fi
done
record "generated sources current" $((${#PAIRS[@]} - stale)) "$stale"
if ((stale)); then
    echo "regenerate with: bash scripts/test-bindings.sh --update (then commit)" >&2
fi

step "package: the wheel and the jar (scripts/package.sh)"
pkg_start=$SECONDS
if bash scripts/package.sh; then record "package (wheel + auditwheel + jar)" 1 0; else
    record "package (wheel + auditwheel + jar)" 0 1
    echo "packaging failed: nothing to test" >&2
    exit 1
fi
echo "package.sh: $((SECONDS - pkg_start)) s"
WHEEL=$(ls "$ROOT"/target/package/murmur-*.whl)
JAR=$(ls "$ROOT"/target/package/murmur-*.jar)

step "python: install the wheel into a clean virtualenv, run pytest there"
UVENV=$ROOT/target/wheel-venv
rm -rf "$UVENV"
python3 -m venv "$UVENV"
"$UVENV/bin/python" -m pip install -q "$WHEEL" pytest
# From outside the source tree, so `import murmur` is the installed wheel.
where=$(cd /tmp && "$UVENV/bin/python" -c 'import murmur; print(murmur.__file__)')
echo "murmur imported from $where"
if [[ $where == "$UVENV"/* ]]; then record "python: import from the wheel" 1 0; else
    record "python: import from the wheel" 0 1
fi
PYLOG=$ROOT/target/pytest.log
set +e
(cd /tmp && MURMUR_EXIT_RUNS=$EXIT_RUNS "$UVENV/bin/python" -m pytest -p no:cacheprovider -q \
    --durations=5 "$ROOT/bindings/python/tests") 2>&1 | tee "$PYLOG"
set -e
py_line=$(grep -E '[0-9]+ (passed|failed|errors?).* in [0-9.]+s' "$PYLOG" | tail -1 || true)
count() { echo "$py_line" | { grep -Eo "[0-9]+ $1" || true; } | awk '{s+=$1} END {print s+0}'; }
py_passed=$(count passed)
py_failed=$(($(count failed) + $(count 'errors?')))
if [[ -z $py_line ]]; then py_failed=1; fi
record "python (pytest, installed wheel)" "$py_passed" "$py_failed"

step "python example (installed wheel)"
if (cd /tmp && timeout 120 "$UVENV/bin/python" "$ROOT/examples/python/basic.py"); then
    record "python example" 1 0
else
    record "python example" 0 1
fi

step "kotlin: compile the tests and the exit scenarios, and the example, against the jar"
KT=$ROOT/target/kotlin
rm -rf "$KT"
mkdir -p "$KT"
"$KOTLIN/bin/kotlinc" -nowarn bindings/kotlin/src/test/kotlin/MurmurTest.kt \
    bindings/kotlin/src/test/kotlin/ExitScenarios.kt -cp "$JAR:$KOTLIN_CP" -d "$KT/murmur-tests.jar"
"$KOTLIN/bin/kotlinc" -nowarn examples/kotlin/Example.kt -cp "$JAR:$KOTLIN_CP" -d "$KT/example.jar"
# Everything runs from an empty directory, with the native library only inside the jar.
EMPTY=$(mktemp -d)
RUN_CP=$JAR:$KOTLIN_RUN_CP

step "kotlin tests (JVM, the jar)"
KTLOG=$ROOT/target/kotlin-tests.log
set +e
(cd "$EMPTY" && timeout 600 java -cp "$KT/murmur-tests.jar:$RUN_CP" MurmurTestKt) 2>&1 | tee "$KTLOG"
set -e
kt_line=$(grep -E '^kotlin: [0-9]+ passed, [0-9]+ failed' "$KTLOG" | tail -1 || true)
if [[ -n $kt_line ]]; then
    kt_passed=$(echo "$kt_line" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+')
    kt_failed=$(echo "$kt_line" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+')
else
    kt_passed=0 kt_failed=1
fi
record "kotlin (JVM)" "$kt_passed" "$kt_failed"

step "kotlin: JVM exit in awkward orders, $EXIT_RUNS runs of each scenario"
exit_start=$SECONDS
kx_passed=0 kx_failed=0
for scenario in $(cd "$EMPTY" && java -cp "$KT/murmur-tests.jar:$RUN_CP" murmur.exit.ExitScenariosKt); do
    # Two at a time; each run must exit 0 (not crash, not hang: 60 s limit).
    bad=$(seq "$EXIT_RUNS" | xargs -P 2 -I{} sh -c '
        d=$(mktemp -d) && cd "$d" && timeout 60 java -cp "$1" murmur.exit.ExitScenariosKt "$2" "$d/data" \
            >"$d.log" 2>&1; rc=$?
        [ $rc -eq 0 ] || { echo "exit code $rc"; tail -5 "$d.log" >&2; }
        cd / && rm -rf "$d" "$d.log"' _ "$KT/murmur-tests.jar:$RUN_CP" "$scenario" | wc -l)
    if ((bad == 0)); then
        echo "PASS $scenario: $EXIT_RUNS runs exit 0"
        kx_passed=$((kx_passed + 1))
    else
        echo "FAIL $scenario: $bad of $EXIT_RUNS runs did not exit 0"
        kx_failed=$((kx_failed + 1))
    fi
done
echo "kotlin exit scenarios: $((SECONDS - exit_start)) s"
record "kotlin exit scenarios (x$EXIT_RUNS)" "$kx_passed" "$kx_failed"

step "kotlin example (the jar + JNA + kotlinx-coroutines + kotlin-stdlib, from an empty directory)"
if (cd "$EMPTY" && timeout 120 java -cp "$KT/example.jar:$RUN_CP" murmur.example.ExampleKt); then
    record "kotlin example" 1 0
else
    record "kotlin example" 0 1
fi
rm -rf "$EMPTY"

step "swift: parse the package (generated, not compiled: no Swift toolchain here)"
SWIFT_FILES=(bindings/swift/Package.swift bindings/swift/Sources/Murmur/murmur.swift
    bindings/swift/Tests/MurmurTests/MurmurTests.swift)
sw_failed=0
"$PY" bindings/swift/check_parse.py "${SWIFT_FILES[@]}" || sw_failed=1
if ((sw_failed)); then
    record "swift (parse)" 0 1
else
    record "swift (parse)" "${#SWIFT_FILES[@]}" 0
fi

step "summary"
echo "test-bindings.sh: $SECONDS s"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
