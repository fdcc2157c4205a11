#!/usr/bin/python3
"""Many rate-limited libtorrent peers in one process, for the benchmark's
"many real peers" rows (issue #29).

    lt_swarm.py seed  FILE.torrent --dir DATA --count 40 --rate B/s --status FILE
    lt_swarm.py leech FILE.torrent --dir DIR  --count 40 --rate B/s --status FILE --peer HOST:PORT

Each peer is its own `lt.session` listening on its own loopback address
(127.0.0.2, 127.0.0.3, ...; Linux routes all of 127/8 to lo), so a client
limiting connections per IP sees 40 hosts, as a seedbox would. Every session
is held to --rate bytes/s (upload for seeders, download for leechers), with
loopback put into the global peer class so the limit holds on 127/8.

seed: every session seeds DATA (shared, read only; seed mode, no check) and
announces to the torrent's tracker. A line "connect HOST:PORT" on stdin makes
every session dial that peer (transmission never dials loopback peers).
leech: each session downloads into DIR/N, dials --peer (again every 2 s while
it has no connection) and nothing else: no
tracker, no PEX, no unchoke slots, so the leechers never feed each other and
every byte they get comes from the peer under test.

Once a second the totals go to --status as JSON (written to a temporary file
and renamed): payload bytes down and up, bytes failing the hash check, connected
peers, sessions seeding, sessions receiving payload now.
Loopback only: DHT, LSD, UPnP and NAT-PMP are off. Needs Debian's
python3-libtorrent (run with /usr/bin/python3).
"""
import argparse
import json
import os
import sys
import threading
import time

import libtorrent as lt

MAX_COUNT = 250
REDIAL_SECS = 2


def session(ip, port, args):
    settings = {
        "listen_interfaces": f"{ip}:{port}",
        "outgoing_interfaces": ip,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        # Plaintext both ways, as the benchmark's other TCP rows.
        "in_enc_policy": 2,
        "out_enc_policy": 2,
        "allowed_enc_level": 1,
        # 40 sessions in one process: few threads each.
        "aio_threads": 1,
        "hashing_threads": 1,
        "alert_mask": lt.alert.category_t.error_notification,
        "user_agent": "lt_swarm",
    }
    if args.mode == "seed":
        settings["upload_rate_limit"] = args.rate
    else:
        settings["download_rate_limit"] = args.rate
        settings["unchoke_slots_limit"] = 0
        # A seeder still checking refuses the first dials; libtorrent would
        # wait a minute before dialling a failed peer again.
        settings["min_reconnect_time"] = 1
    ses = lt.session(settings)
    everyone = lt.ip_filter()
    everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
    ses.set_peer_class_filter(everyone)
    return ses


def add(ses, i, args):
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(args.torrent)
    if args.mode == "seed":
        params.save_path = args.dir
        params.flags |= lt.torrent_flags.seed_mode
    else:
        params.save_path = os.path.join(args.dir, str(i))
        # Added paused so no announce goes out before the trackers are gone.
        params.flags |= lt.torrent_flags.disable_pex | lt.torrent_flags.paused
        params.flags &= ~lt.torrent_flags.auto_managed
    h = ses.add_torrent(params)
    if args.mode == "leech":
        h.replace_trackers([])
        h.resume()
        for p in args.peer:
            dial(h, p)
    return h


def dial(h, peer):
    host, port = peer.rsplit(":", 1)
    h.connect_peer((host.strip("[]"), int(port)))


def write_status(path, handles):
    st = [h.status() for h in handles]
    doc = {"down": sum(s.total_payload_download for s in st), "up": sum(s.total_payload_upload for s in st),
           "peers": sum(s.num_peers for s in st), "seeding": sum(1 for s in st if s.is_seeding),
           "failed": sum(s.total_failed_bytes for s in st), "moving": sum(1 for s in st if s.download_payload_rate > 0),
           "time": time.time()}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["seed", "leech"])
    ap.add_argument("torrent")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--first-ip", type=int, default=2, help="the first session listens on 127.0.0.N")
    ap.add_argument("--port", type=int, default=6881, help="every session listens on this port of its own address")
    ap.add_argument("--rate", type=int, required=True, help="bytes/s per session")
    ap.add_argument("--peer", action="append", default=[], help="HOST:PORT every session dials")
    ap.add_argument("--status", required=True)
    ap.add_argument("--timeout", type=float, default=1800, help="exits after this many seconds")
    args = ap.parse_args()
    if not 1 <= args.count <= MAX_COUNT or not 1 <= args.first_ip or args.first_ip + args.count > 255:
        sys.exit(f"--count {args.count} from 127.0.0.{args.first_ip}: at most {MAX_COUNT}, within 127.0.0.1-254")
    if args.rate <= 0:
        sys.exit("--rate must be positive")
    sessions, handles = [], []
    for i in range(args.count):
        ses = session(f"127.0.0.{args.first_ip + i}", args.port, args)
        sessions.append(ses)
        handles.append(add(ses, i, args))

    def commands():
        for line in sys.stdin:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "connect":
                for h in handles:
                    dial(h, parts[1])

    threading.Thread(target=commands, daemon=True).start()
    start = last_dial = time.time()
    while time.time() - start < args.timeout:
        write_status(args.status, handles)
        if args.mode == "leech" and time.time() - last_dial >= REDIAL_SECS:
            for h in handles:
                if h.status().num_peers == 0:
                    for p in args.peer:
                        dial(h, p)
            last_dial = time.time()
        for ses in sessions:
            for a in ses.pop_alerts():
                if a.category() & lt.alert.category_t.error_notification:
                    print("alert:", a.message(), flush=True)
        time.sleep(1)
    return 1


if __name__ == "__main__":
    sys.exit(main())
