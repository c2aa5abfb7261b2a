#!/usr/bin/env bash
# Tests the uniffi bindings: builds the library, checks that the committed Kotlin and Swift
# sources are what uniffi-bindgen generates now, builds and installs the Python wheel and runs
# pytest, compiles and runs the Kotlin tests on the JVM, parses the Swift package (no Swift
# compiler here), and runs the Python and Kotlin examples.
#
# Installs what is missing (Debian, as root): libjna-java and a JDK with apt, maturin, pytest and
# tree-sitter(-swift) in a virtualenv under .tools/, the Kotlin compiler from npm under .tools/.
#
# Usage: bash scripts/test-bindings.sh            run everything
#        bash scripts/test-bindings.sh --update   first rewrite the committed generated sources
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
KOTLIN_VERSION=2.4.20
UPDATE=0
[[ "${1:-}" == "--update" ]] && UPDATE=1

step() { printf '\n== %s\n' "$*"; }
PASSED=0
FAILED=0
SUMMARY=()
record() { # suite passed failed
    PASSED=$((PASSED + $2))
    FAILED=$((FAILED + $3))
    SUMMARY+=("$1: $2 passed, $3 failed")
}

step "tools"
APT_NEEDED=()
command -v java >/dev/null || APT_NEEDED+=(default-jdk-headless)
[[ -f /usr/share/java/jna.jar ]] || APT_NEEDED+=(libjna-java)
python3 -c 'import venv, ensurepip' 2>/dev/null || APT_NEEDED+=(python3-venv)
command -v npm >/dev/null || APT_NEEDED+=(npm)
if ((${#APT_NEEDED[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_NEEDED[@]}"
fi
JNA=/usr/share/java/jna.jar
mkdir -p "$TOOLS"
VENV=$TOOLS/venv
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
PY=$VENV/bin/python
for mod in maturin:maturin pytest:pytest tree_sitter:tree-sitter tree_sitter_swift:tree-sitter-swift; do
    if ! "$PY" -c "import ${mod%%:*}" 2>/dev/null; then
        "$PY" -m pip install -q "${mod#*:}"
    fi
done
KOTLIN=$TOOLS/kotlin
if [[ ! -x $KOTLIN/bin/kotlinc ]]; then
    (cd "$TOOLS" && npm pack -q "kotlin-compiler@$KOTLIN_VERSION" >/dev/null &&
        rm -rf package && tar xzf "kotlin-compiler-$KOTLIN_VERSION.tgz" && rm -rf kotlin &&
        mv package kotlin && rm "kotlin-compiler-$KOTLIN_VERSION.tgz")
fi
KOTLIN_CP=$JNA:$KOTLIN/lib/kotlinx-coroutines-core-jvm.jar
KOTLIN_RUN_CP=$KOTLIN_CP:$KOTLIN/lib/kotlin-stdlib.jar
java -version 2>&1 | head -1
"$PY" -m maturin --version
"$KOTLIN/bin/kotlinc" -version 2>&1 | tail -1

step "build the library and the bindgen"
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

step "python: build the wheel, install it, run pytest"
rm -rf target/wheels
(cd bindings/python && "$PY" -m maturin build --profile dev --out "$ROOT/target/wheels")
"$PY" -m pip install -q --force-reinstall --no-deps target/wheels/murmur-*.whl
# From outside the source tree, so `import murmur` is the installed wheel.
PYLOG=$ROOT/target/pytest.log
set +e
(cd /tmp && "$PY" -m pytest -p no:cacheprovider -q "$ROOT/bindings/python/tests") 2>&1 | tee "$PYLOG"
set -e
py_line=$(grep -E '[0-9]+ (passed|failed|errors?).* in [0-9.]+s' "$PYLOG" | tail -1 || true)
count() { echo "$py_line" | { grep -Eo "[0-9]+ $1" || true; } | awk '{s+=$1} END {print s+0}'; }
py_passed=$(count passed)
py_failed=$(($(count failed) + $(count 'errors?')))
if [[ -z $py_line ]]; then py_failed=1; fi
record "python (pytest)" "$py_passed" "$py_failed"

step "python example"
if (cd /tmp && timeout 120 "$PY" "$ROOT/examples/python/basic.py"); then
    record "python example" 1 0
else
    record "python example" 0 1
fi

step "kotlin: compile the generated sources, the tests and the example (one kotlinc run)"
mkdir -p target/kotlin
"$KOTLIN/bin/kotlinc" -nowarn \
    bindings/kotlin/src/main/kotlin/uniffi/murmur/murmur.kt \
    bindings/kotlin/src/test/kotlin/MurmurTest.kt \
    examples/kotlin/Example.kt \
    -cp "$KOTLIN_CP" -d target/kotlin/murmur-tests.jar
KTLOG=$ROOT/target/kotlin-tests.log
set +e
timeout 600 java -Djna.library.path="$ROOT/target/debug" \
    -cp "target/kotlin/murmur-tests.jar:$KOTLIN_RUN_CP" MurmurTestKt 2>&1 | tee "$KTLOG"
set -e
kt_line=$(grep -E '^kotlin: [0-9]+ passed, [0-9]+ failed' "$KTLOG" | tail -1 || true)
if [[ -n $kt_line ]]; then
    kt_passed=$(echo "$kt_line" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+')
    kt_failed=$(echo "$kt_line" | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+')
else
    kt_passed=0 kt_failed=1
fi
record "kotlin (JVM)" "$kt_passed" "$kt_failed"

step "kotlin example"
if (cd /tmp && timeout 120 java -Djna.library.path="$ROOT/target/debug" \
    -cp "$ROOT/target/kotlin/murmur-tests.jar:$KOTLIN_RUN_CP" murmur.example.ExampleKt); then
    record "kotlin example" 1 0
else
    record "kotlin example" 0 1
fi

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
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
