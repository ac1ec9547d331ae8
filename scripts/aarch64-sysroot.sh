#!/bin/sh
# Usage: aarch64-sysroot.sh DIR
# The arm64 libraries the cross build (make test-aarch64) links and runs with,
# unpacked under DIR from Debian's arm64 packages - never installed: Debian's
# libevent-dev is not multiarch-coinstallable (libevent-dev:arm64 would remove
# the host's), and nothing here changes the host's dpkg architectures or
# packages. apt-get reads the arm64 package lists into DIR/apt (its own lists,
# cache and an empty status), downloads the .debs and dpkg-deb unpacks them:
# libc6 and libgcc-s1 (the loader and libc qemu-user runs the tests with,
# qemu-aarch64 -L DIR), libevent and check with their development files.
set -eu
dir=$1
PKGS="libc6 libgcc-s1 libevent-2.1-7 libevent-dev check libsubunit0 libsubunit-dev"
[ -f "$dir/.complete" ] && exit 0
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
apt="$dir/apt"
rm -rf "$apt"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
chmod -R 777 "$apt" # apt drops to the _apt user where it can
: > "$apt/status"
set -- -q -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
  -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" -o Dir::State::status="$apt/status"
echo "aarch64-sysroot: arm64 package lists"
apt-get "$@" update >"$apt/update.log" 2>&1 || { cat "$apt/update.log" >&2; exit 1; }
# shellcheck disable=SC2086
(cd "$apt/debs" && apt-get "$@" download $PKGS)
for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$dir"; done
rm -rf "$apt"
[ -e "$dir/lib/ld-linux-aarch64.so.1" ] && [ -f "$dir/usr/lib/aarch64-linux-gnu/pkgconfig/libevent.pc" ] &&
  [ -f "$dir/usr/lib/aarch64-linux-gnu/pkgconfig/check.pc" ]
touch "$dir/.complete"
echo "aarch64-sysroot: $PKGS unpacked in $dir"
