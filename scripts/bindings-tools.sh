# Sourced by scripts/package.sh and scripts/test-bindings.sh: installs what the bindings' build
# and tests need, when missing, and sets the variables below. Debian, as root: a JDK and
# libjna-java with apt; maturin, ziglang (the C compiler and linker for glibc 2.17), auditwheel,
# pytest and tree-sitter(-swift) in a virtualenv under .tools/; the Kotlin compiler from npm under
# .tools/.
#   ROOT TOOLS PY (the tools' python) JNA KOTLIN KOTLIN_CP (JNA + coroutines)
#   KOTLIN_RUN_CP (KOTLIN_CP + kotlin-stdlib)
ROOT=${ROOT:-$PWD}
TOOLS=$ROOT/.tools
KOTLIN_VERSION=2.4.20
APT_NEEDED=()
command -v java >/dev/null || APT_NEEDED+=(default-jdk-headless)
command -v jar >/dev/null || APT_NEEDED+=(default-jdk-headless)
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
for mod in maturin:maturin ziglang:ziglang auditwheel:auditwheel pytest:pytest \
    tree_sitter:tree-sitter tree_sitter_swift:tree-sitter-swift; do
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
