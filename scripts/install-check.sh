#!/bin/sh
# install-check.sh PREFIX
#
# Prove that an installed evexec (cmake --install build --prefix PREFIX) is
# usable from outside the source tree, the two ways users consume it:
#   1. cc $(pkg-config --cflags --libs evexec)   with PKG_CONFIG_PATH=<libdir>/pkgconfig
#   2. find_package(evexec) + target_link_libraries(... evexec::evexec)
#      with CMAKE_PREFIX_PATH=PREFIX
# Both build tests/consumer/main.c and coro.c (coroutine handlers) (and ext.c, over evexec_sqlite and
# evexec_mail, when those are installed) in a temporary directory, and every
# binary must run WITHOUT LD_LIBRARY_PATH (the .pc files and CMake put an
# RPATH in), load the installed libraries, and print "consumer...: ok".
# The man pages: `man -l` renders the installed executor page, and
# `man evx_submit` (MANPATH=PREFIX/share/man) finds it.
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
cp "$src/main.c" "$src/ext.c" "$src/coro.c" "$src/CMakeLists.txt" "$work/" # build outside the source tree

# Run a consumer binary against the installed libraries, with no
# LD_LIBRARY_PATH, and check what it loaded. run BIN HOW [ARGS...]
run() {
  bin=$1
  how=$2
  shift 2
  for lib in $(env -u LD_LIBRARY_PATH ldd "$bin" | awk '/libevexec[a-z_]*\.so/ {print $1 "=" $3}'); do
    file=${lib#*=}
    [ "$file" != "not" ] && [ -f "$file" ] ||
      die "$how: $bin cannot find ${lib%%=*} without LD_LIBRARY_PATH (no RPATH?)"
    loaded_dir=$(cd "$(dirname "$file")" && pwd -P)
    [ "$loaded_dir" = "$libdir" ] || die "$how: $bin loads $file, not the installed $libdir"
  done
  env -u LD_LIBRARY_PATH ldd "$bin" | grep -q 'libevexec\.so' ||
    die "$how: $bin is not linked against libevexec.so"
  if ! out=$(env -u LD_LIBRARY_PATH "$bin" "$@" 2>&1); then
    printf '%s\n' "$out" >&2
    die "$how: $bin failed"
  fi
  printf '%s\n' "$out" | grep -q '^consumer[a-z-]*: ok' || {
    printf '%s\n' "$out" >&2
    die "$how: $bin did not print 'consumer...: ok'"
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
# coro.c: coroutine handlers that offload, long-poll, get EVX_EGONE and auto-finish.
# shellcheck disable=SC2086
if ! $cc -std=c11 -Wall -Wextra -Werror -pthread -o "$work/consumer-coro-pkgconfig" "$work/coro.c" \
  $cflags $libs >"$work/pcc.log" 2>&1; then
  cat "$work/pcc.log" >&2
  die "pkg-config build of coro.c failed: $cc ... $cflags $libs"
fi
run "$work/consumer-coro-pkgconfig" "pkg-config coro"

# The optional libraries, each with its own .pc (Requires: evexec).
exts=""
for e in evexec_sqlite evexec_mail; do
  [ -f "$pcdir/$e.pc" ] && exts="$exts $e"
done
if [ "$exts" = " evexec_sqlite evexec_mail" ]; then
  # shellcheck disable=SC2086
  pkg-config --exists --print-errors $exts || die "pkg-config cannot resolve$exts"
  # shellcheck disable=SC2086
  xflags="$(pkg-config --cflags $exts) $(pkg-config --libs $exts)"
  # shellcheck disable=SC2086
  if ! $cc -std=c11 -Wall -Wextra -Werror -o "$work/consumer-ext-pkgconfig" "$work/ext.c" $xflags \
    >"$work/pcx.log" 2>&1; then
    cat "$work/pcx.log" >&2
    die "pkg-config build of ext.c failed: $cc ... $xflags"
  fi
  mkdir -p "$work/db-pc"
  run "$work/consumer-ext-pkgconfig" "pkg-config$exts" "$work/db-pc"
else
  say "evexec_sqlite/evexec_mail not both installed; ext consumer skipped"
fi
# Every installed library has its .pc and resolves (ext/tasks: Requires evexec_sqlite).
for f in "$libdir"/libevexec_*.so; do
  [ -e "$f" ] || continue
  name=$(basename "$f" .so)
  name=${name#lib}
  [ -f "$pcdir/$name.pc" ] || die "$name is installed without $pcdir/$name.pc"
  pkg-config --exists --print-errors "$name" || die "pkg-config cannot resolve $name"
  say "pkg-config $name: $(pkg-config --libs "$name")"
done
# An installed tool runs without LD_LIBRARY_PATH too.
if [ -x "$prefix/bin/evx-tasks" ]; then
  env -u LD_LIBRARY_PATH "$prefix/bin/evx-tasks" --help >"$work/tool.log" 2>&1 || {
    cat "$work/tool.log" >&2
    die "$prefix/bin/evx-tasks --help failed without LD_LIBRARY_PATH"
  }
  say "evx-tasks --help runs without LD_LIBRARY_PATH"
fi

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
run "$work/build/consumer-coro" "find_package coro"
if [ -n "$exts" ] && [ -x "$work/build/consumer-ext" ]; then
  mkdir -p "$work/db-cmake"
  run "$work/build/consumer-ext" "find_package ext" "$work/db-cmake"
fi

# --- 3. man pages ----------------------------------------------------------------
man3="$prefix/share/man/man3"
[ -f "$man3/evx_submit.3" ] || die "no $man3/evx_submit.3 (run make docs before installing)"
page=$(cd "$prefix/share/man" && man -l man3/evexec_executor.h.3 2>&1) ||
  die "man -l $man3/evexec_executor.h.3 failed: $page"
printf '%s\n' "$page" | grep -q 'evx_submit' || die "the installed executor man page does not mention evx_submit"
found=$(MANPATH="$prefix/share/man" man -w evx_submit 2>&1) || die "man -w evx_submit: $found"
case "$found" in
  "$prefix"/share/man/man3/*) ;;
  *) die "man evx_submit found $found, not the installed page" ;;
esac
page=$(MANPATH="$prefix/share/man" MANPAGER=cat man evx_submit 2>&1) || die "man evx_submit: $page"
printf '%s\n' "$page" | grep -q 'evx_submit' || die "man evx_submit does not show evx_submit"
say "man pages: $(ls "$man3" | wc -l) in share/man/man3; man evx_submit works"

say "OK"
