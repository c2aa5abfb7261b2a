#!/usr/bin/env bash
# Builds the packages a Python or JVM user installs, from ONE release build of the native
# library, compiled and linked by zig against glibc 2.17 (so it loads on any x86_64 Linux with
# glibc 2.17 or newer: manylinux2014):
#
#   target/package/murmur-<version>-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
#       the Python package (maturin, uniffi bindings; the library is loaded with ctypes, so the
#       wheel is not tied to a CPython version or ABI: tag py3-none, for every Python >= 3.9),
#       checked with `auditwheel show`;
#   target/package/murmur-<version>.jar
#       the generated Kotlin classes plus the same libmurmur.so at JNA's resource path
#       linux-x86-64/libmurmur.so; a JVM user adds this jar, JNA (>= 5.12),
#       kotlinx-coroutines-core (>= 1.6) and kotlin-stdlib.
#
# Installs what it needs (see scripts/bindings-tools.sh). Usage: bash scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/bindings-tools.sh
OUT=$ROOT/target/package
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== wheel: release build with zig for glibc 2.17 (manylinux2014)"
# maturin runs `python -m ziglang` from the environment it runs in.
# uniffi-bindgen reads the interface from the symbol table (.symtab), and zig drops it when
# asked to strip debug info (the release profile's default): keep the symbols.
(cd bindings/python && PATH=$VENV/bin:$PATH CARGO_PROFILE_RELEASE_STRIP=none "$PY" -m maturin build --release --zig \
    --compatibility manylinux2014 --target x86_64-unknown-linux-gnu --out "$OUT")
WHEEL=$(ls "$OUT"/murmur-*.whl)
echo "built $WHEEL"

echo "== auditwheel: the wheel's platform tag"
"$VENV/bin/auditwheel" show "$WHEEL" | tee "$OUT/auditwheel.txt"
# The tag auditwheel finds the wheel consistent with must be manylinux2014 (glibc 2.17) or older.
if ! tr -s ' \n' ' ' <"$OUT/auditwheel.txt" |
    grep -Eq 'consistent with the following platform tag: "manylinux_2_(5|12|17)_x86_64"'; then
    echo "auditwheel does not report manylinux2014 (glibc 2.17) or older" >&2
    exit 1
fi

echo "== jar: generated Kotlin classes + linux-x86-64/libmurmur.so"
NATIVE=$OUT/native/linux-x86-64
mkdir -p "$NATIVE"
unzip -q -j -o "$WHEEL" 'murmur/*libmurmur.so' -d "$NATIVE"
[[ -f $NATIVE/libmurmur.so ]] || { echo "no libmurmur.so in the wheel" >&2; exit 1; }
"$KOTLIN/bin/kotlinc" -nowarn bindings/kotlin/src/main/kotlin/uniffi/murmur/murmur.kt \
    -cp "$KOTLIN_CP" -d "$OUT/classes"
JAR=$OUT/murmur-$VERSION.jar
jar --create --file "$JAR" -C "$OUT/classes" . -C "$OUT/native" linux-x86-64/libmurmur.so
rm -rf "$OUT/classes" "$OUT/native"
echo "built $JAR"
ls -l "$OUT"
