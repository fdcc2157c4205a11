#!/usr/bin/python3
"""A libtorrent-rasterbar peer for dropseed's tests and benchmark.

    lt_peer.py seed  FILE.torrent --dir DATA --port P      seeds until killed
    lt_peer.py leech FILE.torrent|MAGNET --dir DIR --port P [--peer HOST:PORT]
                                                           exits 0 when complete
A line "connect HOST:PORT" on stdin makes it dial that peer.

Runs on loopback only: DHT, LSD, UPnP and NAT-PMP are off, and several
connections per IP are allowed because every peer is 127.0.0.1. Prints one
line per second: state, progress, rates. Needs Debian's python3-libtorrent
(run with /usr/bin/python3).
"""
import argparse
import sys
import threading
import time

import libtorrent as lt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["seed", "leech"])
    ap.add_argument("source")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--peer", action="append", default=[], help="HOST:PORT to connect to")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()

    settings = {
        "listen_interfaces": f"127.0.0.1:{args.port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.error_notification,
        "user_agent": "lt_peer",
    }
    ses = lt.session(settings)
    if args.source.startswith("magnet:"):
        params = lt.parse_magnet_uri(args.source)
    else:
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(args.source)
    params.save_path = args.dir
    h = ses.add_torrent(params)
    for p in args.peer:
        host, port = p.rsplit(":", 1)
        h.connect_peer((host.strip("[]"), int(port)))

    def commands():
        # "connect HOST:PORT" on stdin dials a peer (for peers that never dial).
        for line in sys.stdin:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "connect":
                host, port = parts[1].rsplit(":", 1)
                h.connect_peer((host.strip("[]"), int(port)))

    threading.Thread(target=commands, daemon=True).start()
    start = time.time()
    while True:
        s = h.status()
        print(f"state={s.state} progress={s.progress:.4f} down={s.download_rate} up={s.upload_rate} peers={s.num_peers}", flush=True)
        if args.mode == "leech" and s.is_seeding:
            print("complete", flush=True)
            return 0
        if time.time() - start > args.timeout:
            print("timeout", flush=True)
            return 1
        for a in ses.pop_alerts():
            if a.category() & lt.alert.category_t.error_notification:
                print("alert:", a.message(), flush=True)
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
