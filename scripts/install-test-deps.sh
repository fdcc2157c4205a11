#!/usr/bin/env bash
# Installs what dropseed's integration tests and benchmark need from Debian.
# Idempotent: packages already present are left alone, apt is only asked when
# something is missing.
set -euo pipefail

packages=(opentracker aria2 transmission-cli transmission-daemon python3-libtorrent mktorrent procps systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The qBittorrent API tests (tests/qbt_api.rs) drive dropseed with this
# client, pinned; pip is asked only when that version is not importable.
QBT_API_VERSION=2026.10.1
install_qbittorrent_api() {
  local have
  have=$(python3 -c 'import importlib.metadata as m; print(m.version("qbittorrent-api"))' 2>/dev/null || true)
  if [ "$have" = "$QBT_API_VERSION" ]; then
    echo "install-test-deps: qbittorrent-api $QBT_API_VERSION present"
    return
  fi
  echo "install-test-deps: pip installing qbittorrent-api==$QBT_API_VERSION"
  # Root in CI with Debian's python: pip needs --break-system-packages there.
  python3 -m pip install -q "qbittorrent-api==$QBT_API_VERSION" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "qbittorrent-api==$QBT_API_VERSION"
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: all present (${packages[*]})"
else
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-test-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v pip3 >/dev/null || python3 -m pip --version >/dev/null 2>&1 || {
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
}
install_qbittorrent_api
echo "install-test-deps: done"
