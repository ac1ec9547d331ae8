#!/bin/sh
# The layering rule, checked on the built static library: core/ needs no
# symbol defined in executor/ or http/, and executor/ none defined in http/
# (DESIGN.md: dependencies point one way). ctest runs it as `layering`.
#
# Usage: cmake/check-layering.sh NM LIBEVEXEC_A SOURCE_DIR
# Archive members are named after their source files (loop.c.o), so each
# member is mapped to its folder by the .c files in SOURCE_DIR/{core,executor,http};
# a file name used in two folders is an error (the mapping would be ambiguous).
set -eu
nm=${1:?usage: check-layering.sh NM LIB SRC}
lib=${2:?usage: check-layering.sh NM LIB SRC}
src=${3:?usage: check-layering.sh NM LIB SRC}

map=$(mktemp)
trap 'rm -f "$map"' EXIT
for dir in core executor http; do
  for f in "$src/$dir"/*.c; do
    [ -f "$f" ] && echo "$(basename "$f").o $dir"
  done
done >"$map"
dups=$(cut -d' ' -f1 "$map" | sort | uniq -d)
if [ -n "$dups" ]; then
  echo "layering: source names used in two folders: $dups" >&2
  exit 1
fi

# nm prints "member.o:" before each member's symbols.
"$nm" "$lib" | awk -v mapfile="$map" '
  BEGIN { while ((getline line < mapfile) > 0) { split(line, a, " "); dir[a[1]] = a[2] } }
  /:$/ { m = substr($0, 1, length($0) - 1); next }
  NF == 2 && $1 == "U" { need[m] = need[m] " " $2; next }
  NF == 3 && $2 ~ /^[A-TV-Z]$/ { owner[$3] = m }
  END {
    bad = 0
    # layer rank: a member may only need symbols of its own or a lower layer
    rank["core"] = 0; rank["executor"] = 1; rank["http"] = 2
    for (m in need) {
      if (!(m in dir)) { printf "layering: archive member %s has no source in core/, executor/ or http/\n", m; bad = 1; continue }
      n = split(need[m], syms, " ")
      for (i = 1; i <= n; i++) {
        s = syms[i]
        if (!(s in owner)) continue          # libevent, libc...
        o = owner[s]
        if (rank[dir[o]] > rank[dir[m]]) {
          printf "layering: %s/%s needs %s from %s/%s\n", dir[m], m, s, dir[o], o
          bad = 1
        }
      }
    }
    if (!bad) printf "layering: ok (%d sources)\n", length(dir)
    exit bad
  }'
