#!/usr/bin/env bash
# Installs what dropseed's integration tests and benchmark need: Debian
# packages, and two pinned PyPI packages for the python3 that runs the tests.
# Idempotent: what is present is left alone; apt and pip are asked only when
# something is missing.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

packages=(opentracker aria2 transmission-cli transmission-daemon python3-libtorrent python3-pip mktorrent procps systemd strace tmux qbittorrent-nox)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: all present (${packages[*]})"
else
  echo "install-test-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pip_pin NAME VERSION: installs NAME==VERSION unless that version imports.
# tests/qbt_api.rs drives dropseed with qbittorrent-api; the /metrics test
# parses the text with prometheus_client. Root with Debian's python needs
# --break-system-packages.
pip_pin() {
  local have
  have=$(python3 -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true)
  if [ "$have" = "$2" ]; then
    echo "install-test-deps: $1 $2 present"
    return
  fi
  echo "install-test-deps: pip installing $1==$2"
  python3 -m pip install -q "$1==$2" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "$1==$2"
}
pip_pin qbittorrent-api 2026.10.1
pip_pin prometheus-client 0.21.1
echo "install-test-deps: done"
