#!/bin/sh
# Installs dropseed as a systemd service, the way the README describes.
# Run as root from the source folder, after `cargo build --release`:
#
#   sudo sh scripts/install.sh
#
# It creates the system user and group `dropseed` (no home skeleton, no
# login), the data folder /var/lib/dropseed (group-writable and setgid, so
# everything in it stays in group dropseed), installs the binary, the README
# and docs/ (the unit's Documentation=), a config in /etc/dropseed/dropseed.toml (kept
# if one is there) and the unit; then starts the service if systemd runs.
# Run again after a new build to upgrade: the binary and the unit are
# replaced, the config is kept, a running service is restarted.
# BIN=path/to/dropseed installs another build.
# NO_START=1 installs without starting or restarting the service.
# INSTANCE=NAME installs one more daemon beside the first, from the template
# unit dropseed@.service: config /etc/dropseed/NAME.toml, folders under
# /var/lib/dropseed/NAME, service dropseed@NAME, its own listen port (PORT=,
# or the first one above those the other configs in /etc/dropseed use).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dropseed}
INSTANCE=${INSTANCE:-}
if [ -n "$INSTANCE" ]; then
    case "$INSTANCE" in
    dropseed | *[!A-Za-z0-9_-]* | -*)
        echo "install.sh: INSTANCE must be letters, digits, _ or - (and not 'dropseed'): got '$INSTANCE'" >&2
        exit 1
        ;;
    watch | downloads | incomplete | state | logs)
        # /var/lib/dropseed/NAME would be one of the first daemon's folders.
        echo "install.sh: INSTANCE '$INSTANCE' is the name of one of the first daemon's folders; choose another" >&2
        exit 1
        ;;
    esac
    DATA=/var/lib/dropseed/$INSTANCE
    CONFIG=/etc/dropseed/$INSTANCE.toml
    SERVICE=dropseed@$INSTANCE
else
    DATA=/var/lib/dropseed
    CONFIG=/etc/dropseed/dropseed.toml
    SERVICE=dropseed
fi

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo sh scripts/install.sh)" >&2
    exit 1
fi
if [ ! -x "$BIN" ]; then
    echo "install.sh: no binary at $BIN: run 'cargo build --release' first (or set BIN)" >&2
    exit 1
fi

# The group may exist already (made for Sonarr's sake before the install).
getent group dropseed >/dev/null || groupadd --system dropseed
if ! getent passwd dropseed >/dev/null; then
    useradd --system --gid dropseed --home-dir "$DATA" --no-create-home \
        --shell /usr/sbin/nologin --comment "dropseed BitTorrent daemon" dropseed
fi
install -d -o dropseed -g dropseed -m 2770 /var/lib/dropseed "$DATA"
install -m 755 "$BIN" /usr/local/bin/dropseed
install -D -m 644 README.md /usr/local/share/doc/dropseed/README.md
install -D -m 644 -t /usr/local/share/doc/dropseed/docs docs/*.md
install -d -m 755 /etc/dropseed
if [ ! -e "$CONFIG" ]; then
    # The default config with its folders under $DATA (and, for an instance,
    # a listen port of its own).
    tmp=$(mktemp)
    /usr/local/bin/dropseed config --default | sed "s|\"dropseed-data/|\"$DATA/|" >"$tmp"
    if [ -n "$INSTANCE" ]; then
        if [ -z "${PORT:-}" ]; then
            used=$(cat /etc/dropseed/*.toml 2>/dev/null | sed -n 's/^listen_port *= *\([0-9]*\).*/\1/p' | sort -n | tail -n 1)
            PORT=$((${used:-6881} + 1))
        fi
        sed -i "s/^listen_port = 6881/listen_port = $PORT/" "$tmp"
        echo "listen port $PORT"
    fi
    install -m 640 -o root -g dropseed "$tmp" "$CONFIG"
    rm -f "$tmp"
    echo "wrote $CONFIG"
else
    echo "kept the existing $CONFIG"
fi
install -D -m 644 scripts/dropseed.service /etc/systemd/system/dropseed.service
install -D -m 644 scripts/dropseed@.service /etc/systemd/system/dropseed@.service

if [ -n "${NO_START:-}" ]; then
    echo "installed; not started (NO_START)"
elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable "$SERVICE"
    # restart: an upgrade must not leave the old binary running.
    systemctl restart "$SERVICE"
    echo "$SERVICE is running: systemctl status $SERVICE; tail -F $DATA/logs/dropseed.log"
else
    echo "systemd is not running here; start it by hand:"
    echo "  setpriv --reuid=dropseed --regid=dropseed --init-groups sh -c 'umask 0007; cd $DATA; exec dropseed run --config $CONFIG'"
fi
echo "let another user (e.g. sonarr) in: usermod -aG dropseed sonarr"
