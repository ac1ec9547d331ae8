#!/bin/sh
# docs-man.sh MAN3DIR
#
# Tidy Doxygen's man3 output for installing into share/man/man3, where every
# package shares one namespace: keep the pages of evexec's own names (evx_*,
# EVX_*, not the internal EVX__*), drop the link pages Doxygen makes for
# struct members ("body.3", "bytes.3"), and prefix the header pages
# ("http.h.3" -> "evexec_http.h.3"), rewriting the links that point to them.
set -eu
dir=$1
[ -d "$dir" ] || {
  echo "docs-man: no $dir (did doxygen run?)" >&2
  exit 1
}
cd "$dir"
for f in *.3; do
  case "$f" in
    EVX__*) rm -f "$f" ;;
    evx_* | EVX_*) ;;
    *.h.3) mv "$f" "evexec_$f" ;;
    *) rm -f "$f" ;;
  esac
done
for f in evx_*.3 EVX_*.3; do
  [ -f "$f" ] || continue
  sed -i 's|^\.so man3/\([a-z]*\.h\.3\)$|.so man3/evexec_\1|' "$f"
done
n=$(ls | wc -l)
[ -f evx_submit.3 ] || {
  echo "docs-man: evx_submit.3 missing after doxygen" >&2
  exit 1
}
echo "docs-man: $n pages in $dir"
