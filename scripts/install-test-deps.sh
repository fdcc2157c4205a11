#!/usr/bin/env bash
# Installs what dropseed's integration tests and benchmark need: Debian
# packages, two pinned PyPI packages for the python3 that runs the tests,
# and the npm packages pinned in tests/flood/package-lock.json (Flood and
# playwright-core, for tests/flood.rs) with the machine's Node.js.
# Idempotent: what is present is left alone; apt and pip are asked only when
# something is missing.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

packages=(opentracker aria2 transmission-cli transmission-daemon python3-libtorrent python3-pip mktorrent procps systemd strace tmux chromium qbittorrent-nox)
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

# tests/flood.rs: Flood (a web UI that manages qBittorrent clients) and
# playwright-core, at the versions in tests/flood/package-lock.json, into
# tests/flood/node_modules; `npm ci` only when an installed version differs.
flood_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/flood"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install-test-deps: node and npm are missing (Node.js 20 or later): tests/flood.rs needs them" >&2
  exit 1
fi
if (cd "$flood_dir" && node -e '
  const lock = require("./package-lock.json").packages;
  for (const [path, p] of Object.entries(lock)) {
    if (path === "") continue;
    let have;
    try { have = require("./" + path + "/package.json").version; } catch { process.exit(1); }
    if (have !== p.version) process.exit(1);
  }'); then
  echo "install-test-deps: tests/flood npm packages present"
else
  echo "install-test-deps: npm ci in tests/flood"
  (cd "$flood_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install-test-deps: done"
