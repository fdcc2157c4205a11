#!/usr/bin/python3
"""A libtorrent-rasterbar peer for dropseed's tests and benchmark.

    lt_peer.py seed  FILE.torrent --dir DATA --port P      seeds until killed
    lt_peer.py leech FILE.torrent|MAGNET --dir DIR --port P [--peer HOST:PORT]
                                                           exits 0 when complete
A line "connect HOST:PORT" on stdin makes it dial that peer.
--listen-ip ADDR listens (TCP, and UDP for the DHT) on ADDR instead of
127.0.0.1, e.g. "[::1]" for an IPv6-only peer.
--enc forced|disabled sets protocol encryption (MSE/PE): forced is RC4
only both ways, disabled is plaintext only; without it libtorrent's default
(either, both ways).
--transport utp|tcp makes it speak only uTP (TCP refused and never
dialled) or only TCP, both ways; without it, both (libtorrent dials uTP first).
--dht-bootstrap HOST:PORT (repeatable) turns the DHT on, bootstrapping from
those nodes only; it then re-announces every few seconds so tests need not
wait for libtorrent's 15-minute announce interval.
--lsd turns Local Service Discovery (BEP 14) on: libtorrent announces the
torrent to 239.192.152.143:6771 through 127.0.0.1 (its listen address) and
takes peers from the announces it hears there.

Runs on loopback only: UPnP and NAT-PMP are off, LSD and the DHT are off
unless asked for, and several connections per IP are allowed because every peer is
127.0.0.1 (so is every DHT node: the one-node-per-IP rules are off). Prints one
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
    ap.add_argument("--listen-ip", default="127.0.0.1", help='address to listen on, "[::1]" for IPv6')
    ap.add_argument("--peer", action="append", default=[], help="HOST:PORT to connect to")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--dht-bootstrap", action="append", default=[], help="HOST:PORT of a DHT node")
    ap.add_argument("--download-limit", type=int, default=0, help="bytes/s, 0 = none")
    ap.add_argument("--upload-limit", type=int, default=0, help="bytes/s, 0 = none")
    ap.add_argument("--unchoke-slots", type=int, default=None, help="peers unchoked at once (a choking test)")
    ap.add_argument("--unchoke-interval", type=int, default=None, help="seconds between choking rounds")
    ap.add_argument("--enc", choices=["forced", "disabled"], help="encryption policy")
    ap.add_argument("--transport", choices=["utp", "tcp"], help="the only protocol, both ways")
    ap.add_argument("--lsd", action="store_true", help="local service discovery on loopback")
    args = ap.parse_args()
    dht = bool(args.dht_bootstrap)

    settings = {
        "listen_interfaces": f"{args.listen_ip}:{args.port}",
        "enable_dht": dht,
        "dht_bootstrap_nodes": ",".join(args.dht_bootstrap),
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_prefer_verified_node_ids": False,
        "enable_lsd": args.lsd,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "download_rate_limit": args.download_limit,
        "upload_rate_limit": args.upload_limit,
        "alert_mask": lt.alert.category_t.error_notification,
        "user_agent": "lt_peer",
    }
    if args.unchoke_slots is not None:
        settings["unchoke_slots_limit"] = args.unchoke_slots
    if args.unchoke_interval is not None:
        settings["unchoke_interval"] = args.unchoke_interval
        settings["optimistic_unchoke_interval"] = args.unchoke_interval
    if args.enc == "forced":
        # policy 0 = forced; allowed_enc_level 2 = RC4 only.
        settings.update(in_enc_policy=0, out_enc_policy=0, allowed_enc_level=2)
    elif args.enc == "disabled":
        # policy 2 = disabled; allowed_enc_level 1 = plaintext only.
        settings.update(in_enc_policy=2, out_enc_policy=2, allowed_enc_level=1)
    if args.transport:
        utp = args.transport == "utp"
        settings.update(enable_outgoing_utp=utp, enable_incoming_utp=utp,
                        enable_outgoing_tcp=not utp, enable_incoming_tcp=not utp)
    ses = lt.session(settings)
    if args.download_limit or args.upload_limit:
        # Loopback peers are "local" and exempt from rate limits by default;
        # put every address in the global class so the limit holds.
        everyone = lt.ip_filter()
        everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        ses.set_peer_class_filter(everyone)
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
    last_announce = 0.0
    while True:
        if dht and time.time() - last_announce > 5:
            h.force_dht_announce()
            last_announce = time.time()
        s = h.status()
        nodes = f" dht_nodes={ses.status().dht_nodes}" if dht else ""
        print(f"state={s.state} progress={s.progress:.4f} down={s.download_rate} up={s.upload_rate} peers={s.num_peers}{nodes}", flush=True)
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
