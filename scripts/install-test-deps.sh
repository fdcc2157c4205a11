#!/usr/bin/env bash
# Installs what dropseed's integration tests and benchmark need from Debian.
# Idempotent: packages already present are left alone, apt is only asked when
# something is missing.
set -euo pipefail

packages=(opentracker aria2 transmission-cli transmission-daemon python3-libtorrent mktorrent procps systemd strace tmux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: all present (${packages[*]})"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-test-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-test-deps: done"
