#!/bin/sh
# Install the Debian packages named on the command line that are not installed yet.
# Used by `make test` / `make demo` so a fresh machine needs nothing by hand.
set -eu
missing=""
# "install ok installed", or "hold ok installed" for a package held at its version.
for p in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q " ok installed$"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "deps: missing packages:$missing (run as root or install them)" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
