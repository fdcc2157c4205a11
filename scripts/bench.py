#!/usr/bin/env python3
"""dropseed's benchmark against the clients users would otherwise pick.

    scripts/bench [--size-mib N] [--rounds N] [--torrents N] [--out FILE]
    scripts/bench --scale 500,2000 [--idle-secs 300]

Everything runs on 127.0.0.1: opentracker, two libtorrent seeders, and each
downloader in turn, alternating, for several rounds. Reported per client:
median MiB/s, CPU seconds per GiB (user+sys of the downloader), peak
anonymous memory (RssAnon), every byte verified. Then seeding (a libtorrent
leecher downloads from one seeder of each kind), recheck speed against the
sha1 crate's single-core speed times the cores, and scale (N small torrents
seeding in one daemon: idle CPU and memory). The client "dropseed-enc" is
dropseed with `encryption = "require"`: it downloads from the same seeders
over RC4, and seeds to a libtorrent leecher forcing RC4 (`--enc forced`).
A client ending in "-utp" talks uTP only: dropseed with `utp = "prefer"`
downloads from the same seeders over uTP and seeds to a uTP-only libtorrent
leecher; "libtorrent-utp" is libtorrent with TCP off both ways. Every other
seeder is measured against a TCP-only leecher, so the seeding rows compare
one transport at a time (libtorrent's default would pick uTP).
"dropseed-copy" is dropseed with `sendfile = false`: blocks to plain TCP
peers copied through user space, as encrypted ones are. Seeding runs
--rounds rounds too, the order turning, and reports medians. Writes a
markdown table to bench/results.md and prints it.

With --scale N[,N...] only the scale comparison runs: N complete torrents
(single- and multi-file, announcing to a local opentracker) seeded by
dropseed, then by transmission-daemon: idle CPU, RssAnon, open file
descriptors, `status` time and restart time, to bench/scale-DATE.md.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LT = ["/usr/bin/python3", str(ROOT / "scripts/lt_peer.py")]
TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
GIB = 1024 * MIB


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """user+sys of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_anon(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def thread_wakeups(pid):
    """Voluntary context switches (a thread going to sleep, so one wakeup
    each) per live thread of `pid`, by thread id."""
    counts = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return counts
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        counts[tid] = int(line.split()[1])
        except OSError:
            pass
    return counts


class Watch:
    """Samples a process's peak RssAnon, last CPU and wakeups while it runs.
    Wakeups are summed over its threads, each at the last count seen, so a
    thread that exits between samples keeps what it had."""

    def __init__(self, pid):
        self.pid, self.peak, self.cpu = pid, 0, 0.0
        self.threads = {}

    def sample(self):
        try:
            self.peak = max(self.peak, rss_anon(self.pid))
            self.cpu = cpu_seconds(self.pid)
        except OSError:
            pass
        for tid, n in thread_wakeups(self.pid).items():
            self.threads[tid] = max(n, self.threads.get(tid, 0))

    @property
    def wakeups(self):
        return sum(self.threads.values())


def wait(cond, timeout, what, watch=None, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if watch:
            watch.sample()
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


def sha1_file(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def scrape(port, info_hash):
    enc = "".join(f"%{b:02X}" for b in bytes.fromhex(info_hash))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET /scrape?info_hash={enc} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk

    def num(key):
        i = data.find(key)
        if i < 0:
            return 0
        j = data.index(b"e", i + len(key))
        return int(data[i + len(key) + 1 : j])

    return num(b"8:complete"), num(b"10:incomplete")


def info_hash_of(torrent):
    data = Path(torrent).read_bytes()
    i = data.index(b"4:infod") + 6
    return hashlib.sha1(data[i:-1]).hexdigest()


class Tracker:
    def __init__(self, work):
        self.dir = work / "tracker"
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        (self.dir / "wl.txt").write_text("")
        os.chmod(self.dir / "wl.txt", 0o644)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["opentracker", "-i", "127.0.0.1", "-p", str(self.port), "-P", str(self.port), "-d", str(self.dir), "-w", "wl.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(lambda: self._up(), 10, "opentracker")

    def _up(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def allow(self, hashes):
        with open(self.dir / "wl.txt", "a") as f:
            for h in hashes:
                f.write(h + "\n")
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/announce"


def kill(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Dropseed:
    BIN = ROOT / "target/release/dropseed"
    # Other builds to compare, by client name (--base-bin adds "dropseed-base").
    BINS = {}
    # TOML lines appended to every dropseed config (--dropseed-config).
    EXTRA = ""

    def __init__(self, work, name, extra="", client="dropseed"):
        self.bin = Dropseed.BINS.get(client, Dropseed.BIN)
        self.dir = work / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.port = free_port()
        d = self.dir
        self.config = d / "dropseed.toml"
        # "dropseed-enc": every connection RC4-encrypted (MSE/PE).
        enc = 'encryption = "require"\n' if client.endswith("-enc") else ""
        # "dropseed-utp": uTP first, so every connection to the seeders is uTP.
        enc += 'utp = "prefer"\n' if client.endswith("-utp") else ""
        # "dropseed-copy": blocks copied to plain TCP peers too (no sendfile).
        enc += 'sendfile = false\n' if client.endswith("-copy") else ""
        self.config.write_text(
            f'[paths]\nwatch_dir = "{d}/watch"\ndownload_dir = "{d}/downloads"\nstate_dir = "{d}/state"\nlog_dir = "{d}/logs"\n'
            f'[network]\nlisten_port = {self.port}\nlisten_address = "127.0.0.1"\n{enc}[dht]\nenabled = false\n'
            f'[log]\nstatus_interval_secs = 0\n{extra}\n{Dropseed.EXTRA}\n')
        (d / "downloads").mkdir()
        (d / "watch").mkdir()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([str(self.bin), "run", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "console.log", "w"))
        wait(lambda: (self.dir / "state/control.sock").exists(), 15, "dropseed socket")

    def request(self, req):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(self.dir / "state/control.sock"))
        s.sendall((json.dumps(req) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        s.close()
        return json.loads(data)

    def torrents(self):
        return self.request({"cmd": "status"}).get("torrents", [])

    def state_of(self, h):
        for t in self.torrents():
            if t["info_hash"] == h:
                return t["state"]
        return None

    def drop(self, torrent):
        tmp = self.dir / "watch" / (Path(torrent).name + ".part")
        shutil.copy(torrent, tmp)
        os.rename(tmp, self.dir / "watch" / Path(torrent).name)

    def stop(self):
        kill(self.proc)


def aria2_start(mode_args, port, d, torrent):
    """aria2c on loopback: no DHT, LSD or PEX; quiet."""
    return subprocess.Popen(["aria2c", *mode_args, "--enable-dht=false", "--bt-enable-lpd=false",
                             "--enable-peer-exchange=false", "--console-log-level=error", "--summary-interval=0",
                             f"--listen-port={port}", f"--dir={d}", str(torrent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def transport_of(client):
    """The lt_peer.py flags that make a libtorrent peer talk to `client` over
    its transport: uTP only for the "-utp" clients, TCP only otherwise."""
    return ["--transport", "utp" if client.endswith("-utp") else "tcp"]


def lt_start(mode, torrent, d, extra=()):
    port = free_port()
    proc = subprocess.Popen(LT + [mode, str(torrent), "--dir", str(d), "--port", str(port), *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    return proc, port


def transmission_start(work, download_dir):
    home = work / "tr-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    rpc, peer = free_port(), free_port()
    (home / "settings.json").write_text(json.dumps({
        "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False, "utp-enabled": False,
        "port-forwarding-enabled": False, "rpc-port": rpc, "rpc-bind-address": "127.0.0.1",
        "rpc-authentication-required": False, "rpc-whitelist-enabled": False, "peer-port": peer,
        "download-dir": str(download_dir), "ratio-limit-enabled": False, "message-level": 1,
        "cache-size-mb": 4, "incomplete-dir-enabled": False}))
    proc = subprocess.Popen(["transmission-daemon", "-f", "-g", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: _port_open(rpc), 15, "transmission rpc")
    return proc, rpc, peer


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def transmission_percent(rpc):
    out = subprocess.run(["transmission-remote", str(rpc), "-l"], capture_output=True, text=True).stdout.splitlines()
    if len(out) < 2:
        return 0
    try:
        return float(out[1].split()[1].rstrip("%"))
    except (IndexError, ValueError):
        return 0


# ---------------------------------------------------------------- download

def wait_exit(proc, what, t0):
    """Waits for a client that exits once its download is complete; returns
    the seconds since `t0` and the watch of its CPU and memory."""
    w = Watch(proc.pid)
    wait(lambda: proc.poll() is not None, 600, what, w, 0.05)
    return time.time() - t0, w


def download_round(client, ctx, magnet=False):
    """One client downloads the payload from the seeders, given the torrent
    file or (magnet=True) only a magnet with the tracker in `tr`. A round
    that fails leaves no client running."""
    live = []
    try:
        return _download_round(client, ctx, magnet, live)
    except BaseException:
        for proc in live:
            kill(proc)
        raise


def _download_round(client, ctx, magnet, live):
    work, size, expect = ctx["work"], ctx["size"], ctx["sha1"]
    torrent = ctx["magnet"] if magnet else ctx["torrent"]
    meta_secs = None
    out = work / f"dl-{client}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    name = ctx["name"]
    t0 = time.time()
    if client.startswith("dropseed"):
        ds = Dropseed(work, f"dl-{client}", client=client)
        ds.start()
        live.append(ds.proc)
        w = Watch(ds.proc.pid)
        source = torrent
        if magnet:
            source = work / "payload.magnet"
            source.write_text(ctx["magnet"] + "\n")
        t0 = time.time()
        ds.drop(source)

        def done():
            nonlocal meta_secs
            state = ds.state_of(ctx["hash"])
            if meta_secs is None and state not in (None, "metadata"):
                meta_secs = time.time() - t0
            return state == "seeding"
        wait(done, 600, "dropseed download", w, 0.05)
        elapsed = time.time() - t0
        w.sample()
        cpu = w.cpu
        path = ds.dir / "downloads" / name
        got = sha1_file(path)
        ds.stop()
    elif client == "aria2":
        port = free_port()
        proc = aria2_start(["--seed-time=0", "--file-allocation=falloc"], port, out, torrent)
        live.append(proc)
        elapsed, w = wait_exit(proc, "aria2 download", t0)
        cpu = w.cpu
        got = sha1_file(out / name)
    elif client == "transmission":
        proc, rpc, peer = transmission_start(work, out)
        live.append(proc)
        w = Watch(proc.pid)
        t0 = time.time()
        subprocess.run(["transmission-remote", str(rpc), "-a", str(torrent)], capture_output=True)
        # transmission never dials loopback peers: the seeders dial it.
        for s in ctx["seeders"]:
            s.stdin.write(f"connect 127.0.0.1:{peer}\n")
            s.stdin.flush()
        wait(lambda: transmission_percent(rpc) >= 100, 600, "transmission download", w, 0.2)
        elapsed = time.time() - t0
        w.sample()
        cpu = w.cpu
        kill(proc)
        path = out / name
        got = sha1_file(path)
    elif client == "libtorrent":
        proc, _ = lt_start("leech", torrent, out)
        live.append(proc)
        elapsed, w = wait_exit(proc, "libtorrent download", t0)
        cpu = w.cpu
        got = sha1_file(out / name)
    elif client == "libtorrent-utp":
        proc, _ = lt_start("leech", torrent, out, transport_of(client))
        live.append(proc)
        elapsed, w = wait_exit(proc, "libtorrent download", t0)
        cpu = w.cpu
        got = sha1_file(out / name)
    shutil.rmtree(out, ignore_errors=True)
    if client.startswith("dropseed"):
        shutil.rmtree(work / f"dl-{client}", ignore_errors=True)
    return {"mibs": size / MIB / elapsed, "cpu_per_gib": cpu / (size / GIB), "anon": w.peak, "ok": got == expect,
            "secs": elapsed, "meta_secs": meta_secs, "wakeups_per_gib": w.wakeups / (size / GIB)}


# ---------------------------------------------------------------- seeding

def seed_round(client, ctx):
    work, torrent, size = ctx["work"], ctx["torrent"], ctx["size"]
    d = work / f"seed-{client}"
    name = ctx["name"]
    pid, port, proc, ds = start_seeder(client, ctx, d)
    time.sleep(1)
    out = work / "seed-leecher"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cpu0 = cpu_seconds(pid)
    t0 = time.time()
    # libtorrent's default offers RC4 and plaintext, and dropseed's default
    # (`prefer`) selects RC4: the plain rows must refuse RC4 to be plain.
    enc = ["--enc", "forced" if client.endswith("-enc") else "disabled"]
    leech, _ = lt_start("leech", torrent, out, ["--peer", f"127.0.0.1:{port}", *enc, *transport_of(client)])
    w = Watch(pid)
    wait(lambda: leech.poll() is not None, 600, f"leecher from {client}", w, 0.1)
    elapsed = time.time() - t0
    cpu = cpu_seconds(pid) - cpu0
    ok = sha1_file(out / name) == ctx["sha1"]
    recheck = None
    if client.startswith("dropseed"):
        # Recheck: verify all the data again while it is in the page cache,
        # timed from the state turning `checking` to `seeding`.
        ds.request({"cmd": "recheck", "id": ctx["hash"]})
        wait(lambda: ds.state_of(ctx["hash"]) == "checking", 30, "checking to start", every=0.002)
        t1 = time.time()
        wait(lambda: ds.state_of(ctx["hash"]) == "seeding", 300, "recheck", every=0.002)
        recheck = time.time() - t1
        ds.stop()
    else:
        kill(proc)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(work / f"seed-{client}", ignore_errors=True)
    return {"mibs": size / MIB / elapsed, "cpu_per_gib": cpu / (size / GIB), "ok": ok, "recheck": recheck}


def start_seeder(client, ctx, d):
    """Starts `client` seeding ctx's payload (hard-linked into `d`, or into
    dropseed's download folder) and waits until it seeds. Returns the pid to
    measure, the peer port, and the process or the Dropseed to stop."""
    work, torrent, name = ctx["work"], ctx["torrent"], ctx["name"]
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    proc = ds = None
    try:
        if client.startswith("dropseed"):
            ds = Dropseed(work, d.name, extra=ctx.get("dropseed_extra", ""), client=client)
            os.link(ctx["data"], ds.dir / "downloads" / name)
            ds.start()
            ds.drop(torrent)
            wait(lambda: ds.state_of(ctx["hash"]) == "seeding", 120, "dropseed seeder ready")
            return ds.proc.pid, ds.port, None, ds
        os.link(ctx["data"], d / name)
        if client == "aria2":
            port = free_port()
            proc = aria2_start(["-V", "--seed-ratio=0.0"], port, d, torrent)
            time.sleep(1)
            wait(lambda: scrape(ctx["tracker"].port, ctx["hash"])[0] >= 1, 120, "aria2 seeder ready")
        elif client == "transmission":
            proc, rpc, port = transmission_start(work, d)
            subprocess.run(["transmission-remote", str(rpc), "-a", str(torrent)], capture_output=True)
            wait(lambda: transmission_percent(rpc) >= 100, 120, "transmission seeder ready", every=0.5)
        elif client.startswith("libtorrent"):
            proc, port = lt_start("seed", torrent, d, transport_of(client))
            wait(lambda: scrape(ctx["tracker"].port, ctx["hash"])[0] >= 1, 120, "libtorrent seeder ready")
        else:
            raise ValueError(f"unknown client {client}")
        return proc.pid, port, proc, None
    except BaseException:
        kill(proc)
        if ds:
            ds.stop()
        raise


# ---------------------------------------------------------------- many real peers

SWARM = ["/usr/bin/python3", str(ROOT / "scripts/lt_swarm.py")]


class Swarm:
    """scripts/lt_swarm.py: ctx["count"] libtorrent sessions in one process,
    each on its own loopback address and held to ctx["rate"] bytes/s. Its
    process is listed in ctx["helpers"], which main kills whatever happens."""

    def __init__(self, mode, ctx, d, extra=()):
        self.status_path = d / "swarm.json"
        self.proc = subprocess.Popen(
            SWARM + [mode, str(ctx["torrent"]), "--dir", str(d), "--count", str(ctx["count"]), "--rate", str(ctx["rate"]),
                     "--port", str(free_port()), "--status", str(self.status_path), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(d / "swarm.log", "w"), text=True)
        ctx["helpers"].append(self.proc)

    def status(self):
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {"down": 0, "up": 0, "peers": 0, "seeding": 0, "failed": 0, "moving": 0, "time": 0}

    def fresh_status(self):
        """The next status the swarm writes (once a second), so a sample of
        the client under test taken now lines up with it."""
        before = self.status()["time"]
        return wait(lambda: (lambda st: st if st["time"] != before else None)(self.status()), 10, "swarm status", every=0.01)

    def stop(self):
        kill(self.proc)


def peers40_down(ctx, clients, rounds, results):
    """Each client downloads the payload from ctx["count"] rate-limited
    libtorrent seeders found at the tracker (transmission is dialled by
    them), alternating, `rounds` times."""
    d = ctx["work"] / "p40-seeders"
    d.mkdir()
    os.link(ctx["data"], d / ctx["name"])
    swarm = Swarm("seed", ctx, d)
    try:
        wait(lambda: scrape(ctx["tracker"].port, ctx["hash"])[0] >= ctx["count"], 300, f"{ctx['count']} seeders at the tracker")
        ctx["seeders"] = [swarm.proc]
        for r in range(rounds):
            for c in clients[r % len(clients):] + clients[:r % len(clients)]:
                res = peers40_try(c, r, "peers40-down", lambda: download_round(c, ctx), results)
                if res:
                    print(f"round {r + 1} peers40-down {c:12} {res['mibs']:7.1f} MiB/s  {res['cpu_per_gib']:5.2f} CPU-s/GiB  "
                          f"{res['wakeups_per_gib']:9.0f} wakeups/GiB  anon {fmt_mib(res['anon'])}  ok={res['ok']}", flush=True)
    finally:
        ctx["seeders"] = []
        swarm.stop()
        shutil.rmtree(d, ignore_errors=True)


def peers40_try(client, r, row, run, results):
    """One round of a many-peers row; a round that fails (a timeout) is
    recorded and reported, and the others go on."""
    try:
        res = run()
    except (TimeoutError, OSError, subprocess.SubprocessError) as e:
        print(f"round {r + 1} {row} {client}: FAILED: {e}", flush=True)
        results.setdefault(client, []).append({"error": str(e)})
        return None
    results.setdefault(client, []).append(res)
    return res


def peers40_up(ctx, clients, rounds, results):
    for r in range(rounds):
        for c in clients[r % len(clients):] + clients[:r % len(clients)]:
            res = peers40_try(c, r, "peers40-up", lambda: seed40_round(c, ctx), results)
            if res:
                print(f"round {r + 1} peers40-up   {c:12} {res['mibs']:7.1f} MiB/s  {res['cpu_per_gib']:5.2f} CPU-s/GiB  "
                      f"{res['wakeups_per_gib']:9.0f} wakeups/GiB  anon {fmt_mib(res['anon'])}  "
                      f"leechers connected {res['peers']}, receiving {res['moving']}  ok={res['ok']}", flush=True)


def seed40_round(client, ctx):
    """`client` seeds to ctx["count"] download-limited libtorrent leechers
    that dial it (and only it; they never upload). Measured over a window of
    ctx["secs"] seconds, from ctx["warmup"] s after the first byte arrives:
    payload the leechers received, and the seeder's CPU, wakeups, RssAnon."""
    work = ctx["work"]
    d, leech_dir = work / f"p40-seed-{client}", work / "p40-leechers"
    pid, port, proc, ds = start_seeder(client, ctx, d)
    swarm = None
    try:
        shutil.rmtree(leech_dir, ignore_errors=True)
        leech_dir.mkdir()
        swarm = Swarm("leech", ctx, leech_dir, ["--peer", f"127.0.0.1:{port}"])
        wait(lambda: swarm.status()["down"] > 0, 60, f"leechers receiving from {client}", every=0.2)
        time.sleep(ctx["warmup"])
        w = Watch(pid)
        s0 = swarm.fresh_status()
        w.sample()
        cpu0, wakeups0 = w.cpu, w.wakeups
        while time.time() - s0["time"] < ctx["secs"] - 0.5:
            w.sample()
            time.sleep(0.2)
        s1 = swarm.fresh_status()
        w.sample()
    finally:
        if swarm:
            swarm.stop()
        kill(proc)
        if ds:
            ds.stop()
        shutil.rmtree(leech_dir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
    got = max(1, s1["down"] - s0["down"])
    return {"mibs": got / MIB / (s1["time"] - s0["time"]), "cpu_per_gib": (w.cpu - cpu0) / (got / GIB),
            "wakeups_per_gib": (w.wakeups - wakeups0) / (got / GIB), "anon": w.peak, "peers": s1["peers"],
            "moving": s1["moving"], "ok": s1["failed"] == 0 and got > 1}


def peers40_medians(rows):
    """Per client: median MiB/s, CPU-s/GiB, wakeups/GiB; peak RssAnon; all
    verified; failed rounds. Clients without a good round are left out."""
    failed = {c: [r["error"] for r in runs if "error" in r] for c, runs in rows.items()}
    rows = {c: [r for r in runs if "error" not in r] for c, runs in rows.items()}
    return {c: {"failed": failed[c], "mibs": statistics.median(r["mibs"] for r in runs), "cpu": statistics.median(r["cpu_per_gib"] for r in runs),
                "wakeups": statistics.median(r["wakeups_per_gib"] for r in runs), "anon": max(r["anon"] for r in runs),
                "ok": all(r["ok"] for r in runs), "peers": [r.get("peers") for r in runs], "moving": [r.get("moving") for r in runs]}
            for c, runs in rows.items() if runs}


def peers40_failures(rows):
    lines = [f"- {c}, a failed round: {e}" for c, runs in rows.items() for e in (r.get("error") for r in runs) if e]
    return ["Failed rounds (not in the medians):", "", *lines, ""] if lines else []


def render_peers40(res, p40, sha_cost):
    """The two "many real peers" sections and their targets."""
    lines, targets = [], []
    count, rate = p40["count"], p40["rate"] // 1024
    down, up = res.get("peers40-down"), res.get("peers40-up")
    if down:
        med = peers40_medians(down)
        lines += [f"## Download from {count} rate-limited peers", "",
                  f"{p40['size_mib']} MiB, 1 MiB pieces, from {count} libtorrent seeders (one `lt.session` each, on "
                  f"127.0.0.2-{count + 1}, each upload-limited to {rate} KiB/s, so at most {count * rate / 1024:.0f} MiB/s in all), "
                  "found at the tracker (transmission is dialled by them). Timed from the start (dropseed: the drop) to complete; "
                  "CPU, wakeups (voluntary context switches summed over the client's threads) and RssAnon of the downloader "
                  "over its whole run.", "",
                  "| client | median MiB/s | median CPU-s/GiB | median wakeups/GiB | peak RssAnon | verified |",
                  "|---|---|---|---|---|---|"]
        for c, m in med.items():
            lines.append(f"| {c} | {m['mibs']:.1f} | {m['cpu']:.2f} | {m['wakeups']:.0f} | {fmt_mib(m['anon'])} | {'all' if m['ok'] else 'NO'} |")
        lines.append("")
        lines += peers40_failures(down)
        others = {c: m for c, m in med.items() if not c.startswith("dropseed")}
        if "dropseed" in med and others:
            d = med["dropseed"]
            frugal = min(others.items(), key=lambda kv: kv[1]["cpu"])
            targets += [
                (f"{count} peers: download CPU/GiB <= 0.75x most frugal reference", f"{d['cpu']:.2f} vs {frugal[0]} {frugal[1]['cpu']:.2f} = {d['cpu'] / frugal[1]['cpu']:.2f}x", d["cpu"] <= 0.75 * frugal[1]["cpu"]),
                (f"{count} peers: download CPU/GiB <= 2x SHA-1 cost", f"{d['cpu']:.2f} vs {sha_cost:.2f} = {d['cpu'] / sha_cost:.2f}x", d["cpu"] <= 2 * sha_cost),
                (f"{count} peers: RssAnon < 32 MiB downloading {p40['size_mib']} MiB (issue: 1 GiB from 50 peers)", fmt_mib(d["anon"]), d["anon"] < 32 * MIB),
            ]
    if up:
        med = peers40_medians(up)
        lines += [f"## Seeding to {count} rate-limited leechers", "",
                  f"Each client seeds the {p40['size_mib']} MiB torrent to {count} libtorrent leechers (one `lt.session` each, on "
                  f"127.0.0.2-{count + 1}, each download-limited to {rate} KiB/s) that dial it; they never upload (no unchoke "
                  "slots, no tracker, no PEX), so every byte comes from the seeder under test. Measured over "
                  f"{p40['secs']} s from {p40['warmup']} s after the first byte: payload the leechers received (hash-checked "
                  "by them), and the seeder's CPU, wakeups and RssAnon. The rate is each client's own choice of how many "
                  "leechers to unchoke at once.", "",
                  "| seeder | median MiB/s | median CPU-s/GiB | median wakeups/GiB | peak RssAnon | leechers connected | receiving at the end | verified |",
                  "|---|---|---|---|---|---|---|---|"]
        for c, m in med.items():
            lines.append(f"| {c} | {m['mibs']:.1f} | {m['cpu']:.2f} | {m['wakeups']:.0f} | {fmt_mib(m['anon'])} | "
                         f"{', '.join(map(str, m['peers']))} | {', '.join(map(str, m['moving']))} | {'all' if m['ok'] else 'NO'} |")
        lines.append("")
        lines += peers40_failures(up)
        others = {c: m for c, m in med.items() if not c.startswith("dropseed")}
        if "dropseed" in med and others:
            d = med["dropseed"]
            frugal = min(others.items(), key=lambda kv: kv[1]["cpu"])
            targets.append((f"{count} leechers: seeding CPU/GiB <= 0.5x most frugal reference", f"{d['cpu']:.2f} vs {frugal[0]} {frugal[1]['cpu']:.2f} = {d['cpu'] / frugal[1]['cpu']:.2f}x", d["cpu"] <= 0.5 * frugal[1]["cpu"]))
    return lines, targets


# ---------------------------------------------------------------- scale

def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    return b"d" + b"".join(bencode(k) + bencode(v[k]) for k in sorted(v)) + b"e"


SCALE_PIECE = 16 * 1024


def make_scale_torrent(data, out, i, announce, rng):
    """Torrent `i` of the scale set, with its data in `data`: even ones a
    single 40 KiB file, odd ones a folder of three files (multi-file)."""
    if i % 2 == 0:
        name = f"single-{i:05d}.bin"
        files = [([], rng.randbytes(40 * 1024))]
    else:
        name = f"multi-{i:05d}"
        files = [(["a.bin"], rng.randbytes(10 * 1024)), (["sub", "b.bin"], rng.randbytes(20 * 1024)),
                 (["c.txt"], rng.randbytes(3 * 1024))]
    blob = b"".join(f[1] for f in files)
    pieces = b"".join(hashlib.sha1(blob[o:o + SCALE_PIECE]).digest() for o in range(0, len(blob), SCALE_PIECE))
    info = {"name": name, "piece length": SCALE_PIECE, "pieces": pieces}
    if i % 2 == 0:
        info["length"] = len(blob)
        (data / name).write_bytes(blob)
    else:
        info["files"] = [{"length": len(b), "path": p} for p, b in files]
        for p, b in files:
            f = data.joinpath(name, *p)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b)
    raw_info = bencode(info)
    (out / f"{name}.torrent").write_bytes(bencode({"announce": announce, "info": info}))
    return out / f"{name}.torrent", hashlib.sha1(raw_info).hexdigest()


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_cpu(pid, secs):
    cpu0, t0 = cpu_seconds(pid), time.time()
    time.sleep(secs)
    return (cpu_seconds(pid) - cpu0) / (time.time() - t0) * 100


SETTLE_SECS = 120
# dropseed's default `announces_per_host`: N torrents on one tracker host
# take N / ANNOUNCE_PACE seconds to make their first announces.
ANNOUNCE_PACE = 10


def steady_start(n, idle_secs):
    """Seconds from the first idle window's end to the steady one: at least
    SETTLE_SECS, and past every first announce (N / ANNOUNCE_PACE s after the
    adds, and 30 s more), so "steady" is idle, not announcing."""
    return max(SETTLE_SECS, n // ANNOUNCE_PACE + 30 - 10 - idle_secs)


# --perf-steady: where dropseed's steady window is recorded with perf.
PERF_STEADY = None


def idle_figures(pid, n, idle_secs, at_tracker, profile=None):
    """Idle CPU over `idle_secs` twice: from 10 s after the last torrent
    seeds (what adding them leaves behind: first announces, dials), and
    again from steady_start later (steady idle); memory and descriptors at
    the end. With `profile`, perf records the steady window (call graphs,
    every thread) into that file."""
    time.sleep(10)
    after_add = idle_cpu(pid, idle_secs)
    time.sleep(steady_start(n, idle_secs))
    perf = None
    if profile:
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "--call-graph", "dwarf,16384", "-p", str(pid), "-o", f"{profile}-{n}.data"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steady = idle_cpu(pid, idle_secs)
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    return {"idle_after_add_pct": after_add, "idle_cpu_pct": steady, "anon": rss_anon(pid), "fds": open_fds(pid),
            "tracker": at_tracker()}


def timed(f):
    t0 = time.time()
    f()
    return time.time() - t0


class TrRpc:
    """transmission-daemon's JSON RPC (the session id handshake included)."""

    def __init__(self, port):
        self.url, self.sid = f"http://127.0.0.1:{port}/transmission/rpc", ""

    def call(self, method, **args):
        import urllib.request
        import urllib.error
        body = json.dumps({"method": method, "arguments": args}).encode()
        for _ in range(3):
            req = urllib.request.Request(self.url, body, {"X-Transmission-Session-Id": self.sid})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return json.loads(r.read())["arguments"]
            except urllib.error.HTTPError as e:
                if e.code != 409:
                    raise
                self.sid = e.headers["X-Transmission-Session-Id"]
        raise RuntimeError("transmission rpc: no session id")

    def seeding(self):
        # status 6 = seeding
        return sum(1 for t in self.call("torrent-get", fields=["status"])["torrents"] if t["status"] == 6)


def seeded_at_tracker(tracker, hashes):
    """How many of (a sample of) `hashes` the tracker lists a seeder for."""
    sample = hashes[:: max(1, len(hashes) // 20)]
    return f"{sum(1 for h in sample if scrape(tracker.port, h)[0] >= 1)}/{len(sample)}"


SCALE_DL_RATE = 4 * MIB
SCALE_DL_SIZE = 1024 * MIB


class RunningDownload:
    """A download under way while the scale set arrives: one aria2 seeder
    held to SCALE_DL_RATE, the daemon fetching SCALE_DL_SIZE from it. Its
    rate before the adds and while they run shows whether adding thousands
    of torrents stalls a transfer already running."""

    def __init__(self, work, tracker):
        self.dir = work / "scale-dl"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "seed").mkdir(parents=True)
        name, piece = "running.bin", MIB
        path = self.dir / "seed" / name
        rng, hashes = random.Random(7), []
        with open(path, "wb") as f:
            for _ in range(SCALE_DL_SIZE // piece):
                block = rng.randbytes(piece)
                f.write(block)
                hashes.append(hashlib.sha1(block).digest())
        info = {"name": name, "piece length": piece, "pieces": b"".join(hashes), "length": SCALE_DL_SIZE}
        self.torrent = self.dir / "running.torrent"
        self.torrent.write_bytes(bencode({"announce": tracker.url, "info": info}))
        self.hash = hashlib.sha1(bencode(info)).hexdigest()
        tracker.allow([self.hash])
        self.tracker, self.seeder = tracker, None

    def start_seeder(self):
        self.seeder = aria2_start(["-V", "--seed-ratio=0.0", f"--max-overall-upload-limit={SCALE_DL_RATE}"],
                                  free_port(), self.dir / "seed", self.torrent)
        wait(lambda: scrape(self.tracker.port, self.hash)[0] >= 1, 120, "rate-limited aria2 seeder ready")

    def stop_seeder(self):
        kill(self.seeder)

    @staticmethod
    def got(ds, h):
        # One torrent's status: `status` would build every torrent's.
        torrents = ds.request({"cmd": "detail", "id": h}).get("torrents") or [{}]
        return torrents[0].get("downloaded", 0)


def scale_dropseed(work, data, torrents, idle_secs, at_tracker, running=None):
    n = len(torrents)
    ds = Dropseed(work, "scale-ds")
    # Seeds the data in place: download_dir is the scale set's data folder.
    ds.config.write_text(ds.config.read_text().replace(f'download_dir = "{ds.dir}/downloads"', f'download_dir = "{data}"'))
    ds.start()
    rates = {}
    if running:
        running.start_seeder()
        ds.drop(running.torrent)
        wait(lambda: running.got(ds, running.hash) > 0, 120, "the running download to start")
        time.sleep(5)
        b0, t0 = running.got(ds, running.hash), time.time()
        time.sleep(10)
        rates["dl_before"] = (running.got(ds, running.hash) - b0) / (time.time() - t0)
    t0 = time.time()
    b0 = running.got(ds, running.hash) if running else 0
    for t in torrents:
        ds.drop(t)

    def seeding():
        return sum(1 for t in ds.torrents() if t["state"] == "seeding" and (not running or t["info_hash"] != running.hash))
    wait(lambda: seeding() == n, 1800, f"dropseed: {n} torrents seeding", every=1)
    added = time.time() - t0
    if running:
        rates["dl_during"] = (running.got(ds, running.hash) - b0) / added
        ds.request({"cmd": "remove", "id": running.hash, "delete_data": True})
        running.stop_seeder()
    res = {"added_secs": added, **rates, **idle_figures(ds.proc.pid, n, idle_secs, at_tracker, PERF_STEADY)}
    cli = [str(ds.bin), "status", "--json", "-c", str(ds.config)]
    res["status_secs"] = statistics.median(timed(lambda: subprocess.run(cli, capture_output=True, check=True)) for _ in range(3))
    ds.stop()
    t0 = time.time()
    ds.start()
    res["socket_secs"] = time.time() - t0
    wait(lambda: seeding() == n, 900, f"dropseed: {n} torrents seeding after a restart", every=0.2)
    res["restart_secs"] = time.time() - t0
    ds.stop()
    shutil.rmtree(ds.dir, ignore_errors=True)
    return res


def scale_transmission(work, data, torrents, idle_secs, at_tracker):
    n = len(torrents)
    proc, rpc_port, _ = transmission_start(work, data)
    rpc = TrRpc(rpc_port)
    t0 = time.time()
    for i in range(0, n, 100):
        for t in torrents[i:i + 100]:
            rpc.call("torrent-add", metainfo=__import__("base64").b64encode(Path(t).read_bytes()).decode(), **{"download-dir": str(data)})
    wait(lambda: rpc.seeding() == n, 3600, f"transmission: {n} torrents seeding", every=1)
    added = time.time() - t0
    res = {"added_secs": added, **idle_figures(proc.pid, 0, idle_secs, at_tracker)}  # its announces go out during its adds
    cli = ["transmission-remote", str(rpc_port), "-l"]
    res["status_secs"] = statistics.median(timed(lambda: subprocess.run(cli, capture_output=True, check=True)) for _ in range(3))
    kill(proc)
    home = work / "tr-home"
    t0 = time.time()
    proc = subprocess.Popen(["transmission-daemon", "-f", "-g", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: _port_open(rpc_port), 60, "transmission rpc", every=0.05)
    res["socket_secs"] = time.time() - t0
    wait(lambda: rpc.seeding() == n, 3600, f"transmission: {n} torrents seeding after a restart", every=0.2)
    res["restart_secs"] = time.time() - t0
    kill(proc)
    shutil.rmtree(home, ignore_errors=True)
    return res


def scale_run(work, tracker, counts, idle_secs, clients=("dropseed", "transmission")):
    """For each N: the same N complete torrents (half single-file, half
    multi-file, all announcing to one opentracker) seeded by dropseed, then
    by transmission-daemon, each alone."""
    rows = []
    running = RunningDownload(work, tracker)
    for n in counts:
        data, tdir = work / f"scale-data-{n}", work / f"scale-torrents-{n}"
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(tdir, ignore_errors=True)
        data.mkdir(parents=True)
        tdir.mkdir()
        rng = random.Random(n)
        made = [make_scale_torrent(data, tdir, i, tracker.url, rng) for i in range(n)]
        tracker.allow([h for _, h in made])
        torrents = [t for t, _ in made]
        runs = {"dropseed": scale_dropseed, "transmission": scale_transmission}
        for client, run in ((c, runs[c]) for c in clients):
            at_tracker = lambda: seeded_at_tracker(tracker, [h for _, h in made])  # noqa: E731
            if client == "dropseed":
                res = run(work, data, torrents, idle_secs, at_tracker, running)
            else:
                res = run(work, data, torrents, idle_secs, at_tracker)
            res.update(client=client, count=n)
            rows.append(res)
            print(f"scale {n:6} {client:12} idle {res['idle_after_add_pct']:.2f}% then {res['idle_cpu_pct']:.2f}%  anon {fmt_mib(res['anon'])}  "
                  f"fds {res['fds']}  at tracker {res['tracker']}  status {res['status_secs']:.3f}s  restart {res['restart_secs']:.1f}s "
                  f"(rpc up {res['socket_secs']:.2f}s)  added in {res['added_secs']:.1f}s", flush=True)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(tdir, ignore_errors=True)
    return rows


def render_scale(rows, idle_secs, cores, command):
    lines = ["# dropseed scale benchmark", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cores} cores, loopback, with `{command}`. "
             "N complete torrents (half one 40 KiB file, half a folder of three files; 16 KiB pieces), every one "
             "announcing to one local opentracker, seeded by each daemon alone in turn from the same data. "
             f"Idle CPU: % of one core over {idle_secs} s, measured from 10 s after the last torrent seeds (after add) "
             f"and again {SETTLE_SECS} s after that window, or later, once every torrent has made its first announce "
             f"(for dropseed N / {ANNOUNCE_PACE} s after the adds plus 30 s, at its default `announces_per_host`; transmission announces as it adds, "
             "more slowly) (steady). RssAnon and open file descriptors at the end. `status`: median of 3 runs of `dropseed status --json` / "
             "`transmission-remote -l` (process start included). Restart: from starting the daemon on its resume "
             "records to every torrent seeding (control socket / RPC port up in brackets). At tracker: of a sample of the "
             "torrents, how many opentracker lists a seeder for at the end of the idle window. Running download: "
             f"before the N torrents arrive, dropseed starts a {SCALE_DL_SIZE // MIB} MiB download from one aria2 seeder "
             f"held to {SCALE_DL_RATE / MIB:.0f} MiB/s; its rate over 10 s before the adds and over the whole add.", "",
             "| N | client | idle CPU % after add | idle CPU % steady | RssAnon | per torrent (anon) | open fds | at tracker | status s | restart s (socket up) | add all s | running download MiB/s before, during add |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dl = f"{r['dl_before'] / MIB:.2f}, {r['dl_during'] / MIB:.2f}" if "dl_during" in r else "-"
        lines.append(f"| {r['count']} | {r['client']} | {r['idle_after_add_pct']:.2f} | {r['idle_cpu_pct']:.2f} | {fmt_mib(r['anon'])} | "
                     f"{r['anon'] / r['count'] / 1024:.1f} KiB | {r['fds']} | {r['tracker']} | {r['status_secs']:.3f} | "
                     f"{r['restart_secs']:.1f} ({r['socket_secs']:.2f}) | {r['added_secs']:.1f} | {dl} |")
    lines.append("")
    return "\n".join(lines)


def fmt_mib(b):
    return f"{b / MIB:.1f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torrents", type=int, default=500)
    ap.add_argument("--clients", default="dropseed,dropseed-enc,dropseed-utp,aria2,transmission,libtorrent,libtorrent-utp")
    ap.add_argument("--skip", default="", help="comma list of: download,magnet,seeding,scale,peers40-down,peers40-up")
    ap.add_argument("--magnet-rounds", type=int, default=1)
    ap.add_argument("--out", help="the report (default bench/results.md; with --scale, bench/scale-DATE.md)")
    ap.add_argument("--scale", help="only the scale comparison with transmission-daemon, for these N (e.g. 500,2000)")
    ap.add_argument("--scale-clients", default="dropseed,transmission", help="--scale: which daemons to run")
    ap.add_argument("--idle-secs", type=int, default=300, help="the idle CPU window of --scale (300 s spans an idle seeder's 5-minute tick)")
    ap.add_argument("--settle-secs", type=int, default=SETTLE_SECS, help="--scale: from the first idle window to the steady one")
    ap.add_argument("--perf-steady", help="--scale: record dropseed's steady idle window with perf into PREFIX-N.data")
    ap.add_argument("--bin", help="the dropseed binary to run (default: this tree's release build)")
    ap.add_argument("--dropseed-config", default="", help="TOML appended to every dropseed config (tables not already there: [storage], [limits]...)")
    ap.add_argument("--base-bin", help="another dropseed build, run as client 'dropseed-base' beside the others")
    ap.add_argument("--work", default=str(ROOT / "bench/work"))
    ap.add_argument("--sha1speed", default=str(ROOT / "target/release/examples/sha1speed"), help="the sha1speed example binary")
    ap.add_argument("--peers40-count", type=int, default=40, help="peers of the many-real-peers rows")
    ap.add_argument("--peers40-size-mib", type=int, default=1024, help="payload of the many-real-peers rows")
    ap.add_argument("--peers40-rate-kib", type=int, default=512, help="KiB/s limit of each of those peers")
    ap.add_argument("--peers40-secs", type=int, default=60, help="measuring window of the seeding-to-many row")
    ap.add_argument("--peers40-warmup", type=int, default=5, help="seconds from the first byte to that window")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    clients = args.clients.split(",")
    if args.bin:
        Dropseed.BIN = Path(args.bin).resolve()
    if args.base_bin:
        Dropseed.BINS["dropseed-base"] = Path(args.base_bin).resolve()
        clients.insert(1, "dropseed-base")
    Dropseed.EXTRA = args.dropseed_config
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    cores = os.cpu_count()
    if args.scale:
        return scale_main(args, work, cores)
    args.out = args.out or str(ROOT / "bench/results.md")
    sha1_speed = float(subprocess.run([args.sha1speed], capture_output=True, text=True, check=True).stdout)
    print(f"sha1 crate, one core: {sha1_speed / MIB:.0f} MiB/s; cores: {cores}", flush=True)

    tracker = Tracker(work)
    helpers = []
    ctx = {"work": work, "tracker": tracker, "seeders": [], "helpers": helpers}
    if not {"download", "magnet", "seeding"} <= skip:
        ctx.update(make_payload(work, "payload.bin", args.size_mib, tracker))
    p40 = None
    if not {"peers40-down", "peers40-up"} <= skip:
        p40 = {**ctx, **make_payload(work, "peers40.bin", args.peers40_size_mib, tracker), "count": args.peers40_count,
               "rate": args.peers40_rate_kib * 1024, "secs": args.peers40_secs, "warmup": args.peers40_warmup,
               "size_mib": args.peers40_size_mib, "seeders": []}
    results = {"download": {}, "magnet": {}, "seeding": {}, "scale": None, "recheck": None, "peers40-down": {}, "peers40-up": {}}
    try:
        if "download" not in skip or "magnet" not in skip:
            for i in range(2):
                d = work / f"lt-seed{i}"
                d.mkdir()
                os.link(ctx["data"], d / ctx["name"])
                p, _ = lt_start("seed", ctx["torrent"], d)
                ctx["seeders"].append(p)
            wait(lambda: scrape(tracker.port, ctx["hash"])[0] >= 2, 300, "two libtorrent seeders")
            phases = [(kind, n) for kind, n in (("download", args.rounds), ("magnet", args.magnet_rounds)) if kind not in skip]
            for kind, rounds in phases:
                for r in range(rounds):
                    order = clients[r % len(clients):] + clients[:r % len(clients)]
                    for c in order:
                        res = download_round(c, ctx, magnet=kind == "magnet")
                        results[kind].setdefault(c, []).append(res)
                        meta = f"  metadata {res['meta_secs']:.2f}s" if kind == "magnet" and res["meta_secs"] is not None else ""
                        print(f"round {r + 1} {kind:8} {c:12} {res['mibs']:7.1f} MiB/s  {res['cpu_per_gib']:5.2f} CPU-s/GiB  "
                              f"anon {fmt_mib(res['anon'])}  ok={res['ok']}{meta}", flush=True)
            for p in ctx["seeders"]:
                kill(p)
            ctx["seeders"] = []
        if "seeding" not in skip:
            # As many rounds as downloads, the clients' order turning.
            for r in range(args.rounds):
                for c in clients[r % len(clients):] + clients[:r % len(clients)]:
                    res = seed_round(c, ctx)
                    results["seeding"].setdefault(c, []).append(res)
                    print(f"round {r + 1} seeding {c:12} {res['mibs']:7.1f} MiB/s  {res['cpu_per_gib']:5.2f} CPU-s/GiB  ok={res['ok']}", flush=True)
                    if res["recheck"] and c == "dropseed":
                        results["recheck"] = res["recheck"]
        if "peers40-down" not in skip:
            peers40_down(p40, clients, args.rounds, results["peers40-down"])
        if "peers40-up" not in skip:
            peers40_up(p40, clients, args.rounds, results["peers40-up"])
        if "scale" not in skip:
            results["scale"] = scale_run(work, tracker, [args.torrents], 30)[0]
            s = results["scale"]
            print(f"scale {s['count']} torrents: idle CPU {s['idle_cpu_pct']:.2f}%  anon {fmt_mib(s['anon'])}", flush=True)
    finally:
        for p in ctx["seeders"] + helpers:
            kill(p)
        kill(tracker.proc)
    report = render(results, args, sha1_speed, cores, p40)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    shutil.rmtree(work, ignore_errors=True)


def make_payload(work, name, size_mib, tracker):
    """`size_mib` MiB of random data in work/src/NAME, its torrent (1 MiB
    pieces) announcing to `tracker`, allowed there; the ctx keys for it."""
    data = work / "src" / name
    data.parent.mkdir(exist_ok=True)
    rng = random.Random(size_mib * 7 + len(name))
    with open(data, "wb") as f:
        for _ in range(size_mib):
            f.write(rng.randbytes(MIB))
    torrent = work / (Path(name).stem + ".torrent")
    subprocess.run(["mktorrent", "-a", tracker.url, "-l", "20", "-o", str(torrent), str(data)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    h = info_hash_of(torrent)
    tracker.allow([h])
    magnet = f"magnet:?xt=urn:btih:{h}&dn={data.name}&tr={urllib.parse.quote(tracker.url, safe='')}"
    return {"torrent": torrent, "magnet": magnet, "size": size_mib * MIB, "sha1": sha1_file(data), "hash": h,
            "name": data.name, "data": data}


def scale_main(args, work, cores):
    global SETTLE_SECS, PERF_STEADY
    SETTLE_SECS = args.settle_secs
    PERF_STEADY = args.perf_steady
    counts = [int(n) for n in args.scale.split(",")]
    tracker = Tracker(work)
    try:
        rows = scale_run(work, tracker, counts, args.idle_secs, args.scale_clients.split(","))
    finally:
        kill(tracker.proc)
    command = "scripts/bench " + " ".join(sys.argv[1:])
    report = render_scale(rows, args.idle_secs, cores, command)
    out = Path(args.out or ROOT / f"bench/scale-{time.strftime('%Y-%m-%d', time.gmtime())}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    shutil.rmtree(work, ignore_errors=True)


def render(res, args, sha1_speed, cores, p40=None):
    lines = [f"# dropseed benchmark", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cores} cores, loopback, with "
             f"`scripts/bench {' '.join(sys.argv[1:])}`; "
             f"{'' if {'download', 'magnet', 'seeding'} <= set(args.skip.split(',')) else f'payload {args.size_mib} MiB, '}"
             f"1 MiB pieces; {args.rounds} rounds, clients alternating. sha1 crate single-core: {sha1_speed / MIB:.0f} MiB/s "
             f"({GIB / sha1_speed:.2f} CPU-s/GiB).", ""]
    if args.note:
        lines += ["Notes:", "", *[f"- {n}" for n in args.note], ""]
    targets = []
    dl = res["download"]
    if dl:
        lines += ["## Download (two libtorrent seeders via opentracker)", "",
                  "| client | median MiB/s | median CPU-s/GiB | peak RssAnon | verified |", "|---|---|---|---|---|"]
        med = {}
        for c, runs in dl.items():
            m = (statistics.median(r["mibs"] for r in runs), statistics.median(r["cpu_per_gib"] for r in runs),
                 max(r["anon"] for r in runs), all(r["ok"] for r in runs))
            med[c] = m
            lines.append(f"| {c} | {m[0]:.1f} | {m[1]:.2f} | {fmt_mib(m[2])} | {'all' if m[3] else 'NO'} |")
        lines.append("")
        others = {c: m for c, m in med.items() if not c.startswith("dropseed")}
        if "dropseed" in med and others:
            d = med["dropseed"]
            fastest = max(others.items(), key=lambda kv: kv[1][0])
            frugal = min(others.items(), key=lambda kv: kv[1][1])
            sha_cost = GIB / sha1_speed
            targets += [
                ("download MiB/s >= 1.5x fastest reference", f"{d[0]:.1f} vs {fastest[0]} {fastest[1][0]:.1f} = {d[0] / fastest[1][0]:.2f}x", d[0] >= 1.5 * fastest[1][0]),
                ("download CPU/GiB <= 0.5x most frugal reference", f"{d[1]:.2f} vs {frugal[0]} {frugal[1][1]:.2f} = {d[1] / frugal[1][1]:.2f}x", d[1] <= 0.5 * frugal[1][1]),
                ("download CPU/GiB <= 2x SHA-1 cost", f"{d[1]:.2f} vs {sha_cost:.2f} = {d[1] / sha_cost:.2f}x", d[1] <= 2 * sha_cost),
                ("RssAnon < 48 MiB while downloading", fmt_mib(d[2]), d[2] < 48 * MIB),
            ]
    mg = res["magnet"]
    if mg:
        lines += ["## Magnet (same swarm, started from a magnet with the tracker in `tr`)", "",
                  "| client | median s to complete | median MiB/s | median CPU-s/GiB | s to metadata | verified |",
                  "|---|---|---|---|---|---|"]
        for c, runs in mg.items():
            metas = [r["meta_secs"] for r in runs if r["meta_secs"] is not None]
            meta = f"{statistics.median(metas):.2f}" if metas else "-"
            lines.append(f"| {c} | {statistics.median(r['secs'] for r in runs):.1f} | "
                         f"{statistics.median(r['mibs'] for r in runs):.1f} | {statistics.median(r['cpu_per_gib'] for r in runs):.2f} | "
                         f"{meta} | {'all' if all(r['ok'] for r in runs) else 'NO'} |")
        lines.append("")
    # Medians over the rounds (each run's CPU-s/GiB listed beside).
    sd = {c: {"mibs": statistics.median(r["mibs"] for r in runs),
              "cpu_per_gib": statistics.median(r["cpu_per_gib"] for r in runs),
              "each": " ".join(f"{r['cpu_per_gib']:.2f}" for r in runs), "ok": all(r["ok"] for r in runs)}
          for c, runs in res["seeding"].items()}
    if sd:
        lines += ["## Seeding (one libtorrent leecher, one seeder)", "",
                  "| seeder | median MiB/s | median seeder CPU-s/GiB | each round | verified |", "|---|---|---|---|---|"]
        for c, r in sd.items():
            lines.append(f"| {c} | {r['mibs']:.1f} | {r['cpu_per_gib']:.2f} | {r['each']} | {'yes' if r['ok'] else 'NO'} |")
        lines.append("")
        others = {c: r for c, r in sd.items() if not c.startswith("dropseed")}
        if "dropseed" in sd and others:
            frugal = min(others.items(), key=lambda kv: kv[1]["cpu_per_gib"])
            d = sd["dropseed"]["cpu_per_gib"]
            targets.append(("seeding CPU/GiB <= 0.5x most frugal reference", f"{d:.2f} vs {frugal[0]} {frugal[1]['cpu_per_gib']:.2f} = {d / frugal[1]['cpu_per_gib']:.2f}x", d <= 0.5 * frugal[1]["cpu_per_gib"]))
    if res["recheck"]:
        speed = args.size_mib * MIB / res["recheck"]
        ratio = speed / (sha1_speed * cores)
        lines += ["## Recheck", "", f"{args.size_mib} MiB verified in {res['recheck']:.2f} s = {speed / MIB:.0f} MiB/s; "
                  f"SHA-1 x {cores} cores = {sha1_speed * cores / MIB:.0f} MiB/s; ratio {ratio:.2f}.", ""]
        targets.append(("recheck >= 80% of SHA-1 x cores", f"{ratio:.2f}", ratio >= 0.8))
    if res["scale"]:
        s = res["scale"]
        lines += ["## Scale", "", f"{s['count']} seeding torrents in one daemon: idle CPU {s['idle_cpu_pct']:.2f}% of one core, "
                  f"RssAnon {fmt_mib(s['anon'])}.", ""]
        targets.append((f"RssAnon < 64 MiB with {s['count']} torrents", fmt_mib(s["anon"]), s["anon"] < 64 * MIB))
    if p40:
        more, more_targets = render_peers40(res, p40, GIB / sha1_speed)
        lines += more
        targets += more_targets
    if targets:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for name, measured, ok in targets:
            lines.append(f"| {name} | {measured} | {'yes' if ok else 'no'} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
