#!/usr/bin/env bash
# Installs what dropseed's integration tests and benchmark need from Debian.
# Idempotent: packages already present are left alone, apt is only asked when
# something is missing.
set -euo pipefail

# The /metrics test parses the text with Python's prometheus_client (PyPI),
# pinned; installed for the user once pip is there.
python_deps() {
  python3 -c 'import prometheus_client' 2>/dev/null && return
  echo "install-test-deps: installing prometheus-client==0.21.1 (pip, --user)"
  python3 -m pip install --user -q prometheus-client==0.21.1 2>/dev/null \
    || python3 -m pip install --user -q --break-system-packages prometheus-client==0.21.1
}

packages=(opentracker aria2 transmission-cli transmission-daemon python3-libtorrent python3-pip mktorrent procps systemd strace)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: all present (${packages[*]})"
  python_deps
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-test-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-test-deps: done"
python_deps
