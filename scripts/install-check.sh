#!/bin/sh
# install-check.sh PREFIX
#
# Prove that an installed evexec (cmake --install build --prefix PREFIX) is
# usable from outside the source tree, the two ways users consume it:
#   1. cc $(pkg-config --cflags --libs evexec)   with PKG_CONFIG_PATH=<libdir>/pkgconfig
#   2. find_package(evexec) + target_link_libraries(... evexec::evexec)
#      with CMAKE_PREFIX_PATH=PREFIX
# Both build tests/consumer/main.c in a temporary directory, and both binaries
# must run, load the installed libevexec.so, and print "consumer: ok".
# It also checks the layout: libdir as chosen by GNUInstallDirs (lib, lib64 or
# lib/<multiarch>), public headers only (no *-internal.h).
# Any failure prints what went wrong and exits non-zero.
set -eu

say() { echo "install-check: $*"; }
die() {
  echo "install-check: FAIL: $*" >&2
  exit 1
}

[ $# -eq 1 ] || {
  echo "usage: $0 PREFIX" >&2
  exit 2
}
prefix=$(cd "$1" 2>/dev/null && pwd -P) || die "prefix '$1' does not exist (run cmake --install first)"
top=$(cd "$(dirname "$0")/.." && pwd -P)
src=$top/tests/consumer
[ -f "$src/main.c" ] && [ -f "$src/CMakeLists.txt" ] || die "missing $src/main.c or CMakeLists.txt"

# --- layout ------------------------------------------------------------------
# The libdir is whatever GNUInstallDirs chose: find it through evexec.pc.
pcs=$(find "$prefix" -path '*/pkgconfig/evexec.pc' -type f)
n=$(printf '%s' "$pcs" | grep -c . || true)
[ "$n" -eq 1 ] || die "expected exactly one pkgconfig/evexec.pc under $prefix, found $n"
pcdir=$(dirname "$pcs")
libdir=$(dirname "$pcdir")
case "$libdir" in
  "$prefix"/lib | "$prefix"/lib64 | "$prefix"/lib/*-*) ;;
  *) die "evexec.pc is in an unexpected libdir: $libdir" ;;
esac
say "prefix $prefix, libdir ${libdir#"$prefix"/}"
for f in "$prefix/include/evexec/evexec.h" "$libdir/cmake/evexec/evexecConfig.cmake"; do
  [ -f "$f" ] || die "missing $f"
done
ls "$libdir"/libevexec.so* >/dev/null 2>&1 || die "no libevexec.so in $libdir"
private=$(find "$prefix/include" \( -name '*-internal.h' -o -name '*.c' \) -print)
[ -z "$private" ] || die "private files installed: $private"

work=$(mktemp -d "${TMPDIR:-/tmp}/evx-install-check.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
cp "$src/main.c" "$src/CMakeLists.txt" "$work/" # build outside the source tree

# Run a consumer binary against the installed library and check what it loaded.
run() {
  bin=$1
  how=$2
  lib_path="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  loaded=$(LD_LIBRARY_PATH="$lib_path" ldd "$bin" | awk '/libevexec\.so/ {print $3}')
  [ -n "$loaded" ] || die "$how: $bin is not linked against libevexec.so"
  loaded_dir=$(cd "$(dirname "$loaded")" && pwd -P)
  [ "$loaded_dir" = "$libdir" ] || die "$how: $bin loads $loaded, not the installed $libdir"
  if ! out=$(LD_LIBRARY_PATH="$lib_path" "$bin" 2>&1); then
    printf '%s\n' "$out" >&2
    die "$how: $bin failed"
  fi
  printf '%s\n' "$out" | grep -q '^consumer: ok' || {
    printf '%s\n' "$out" >&2
    die "$how: $bin did not print 'consumer: ok'"
  }
  say "$how: $out"
}

# --- 1. pkg-config ---------------------------------------------------------------
PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
pkg-config --exists --print-errors evexec || die "pkg-config cannot resolve evexec"
inc=$(pkg-config --variable=includedir evexec)
[ -f "$inc/evexec/evexec.h" ] ||
  die "evexec.pc points to includedir '$inc', which has no evexec/evexec.h (is the .pc relocatable?)"
pclib=$(pkg-config --variable=libdir evexec)
[ -d "$pclib" ] && [ "$(cd "$pclib" && pwd -P)" = "$libdir" ] ||
  die "evexec.pc points to libdir '$pclib', not $libdir"
cflags=$(pkg-config --cflags evexec)
libs=$(pkg-config --libs evexec)
cc=${CC:-cc}
# shellcheck disable=SC2086 # word splitting of pkg-config output is intended
if ! $cc -std=c11 -Wall -Wextra -Werror -o "$work/consumer-pkgconfig" "$work/main.c" $cflags $libs \
  >"$work/pc.log" 2>&1; then
  cat "$work/pc.log" >&2
  die "pkg-config build failed: $cc ... $cflags $libs"
fi
run "$work/consumer-pkgconfig" "pkg-config"

# --- 2. CMake find_package -------------------------------------------------------
if ! cmake -S "$work" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1; then
  cat "$work/cmake.log" >&2
  die "find_package(evexec) with CMAKE_PREFIX_PATH=$prefix failed"
fi
found=$(sed -n 's/^evexec_DIR:PATH=//p' "$work/build/CMakeCache.txt")
case "$(cd "$found" && pwd -P)" in
  "$prefix"/*) ;;
  *) die "find_package found evexec in $found, not under $prefix" ;;
esac
if ! cmake --build "$work/build" >"$work/build.log" 2>&1; then
  cat "$work/build.log" >&2
  die "CMake build of the consumer failed"
fi
run "$work/build/consumer" "find_package"

say "OK"
