"""One qbittorrent-api script against two servers: Debian's qbittorrent-nox
(the reference, API 2.8) and dropseed (API 2.11), seeding the same
multi-file torrent from the same data in category `tv`
(tests/qbt_diff.rs starts both and passes everything in DIFF_*).

At each step (seeding, stopped, started) both must be in the same state as
qbittorrent-api classifies it, and the JSON of the read endpoints must have
the same shape: every field qbittorrent-nox sends exists in dropseed's
answer with the same JSON type (dropseed may send more). Prints DIFF OK, or
every difference, one per line, and exits 1."""

import json
import os
import sys
import time

import qbittorrentapi
import requests
from qbittorrentapi import TorrentState

env = os.environ
TORRENT, HASH = env["DIFF_TORRENT"], env["DIFF_HASH"]


def wait(what, pred, timeout=90):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Server:
    """One server: a qbittorrent-api client for actions, raw HTTP for the
    JSON exactly as sent."""

    def __init__(self, label, url, password, save):
        self.label, self.url, self.save = label, url, save
        self.client = qbittorrentapi.Client(host=url, username="admin", password=password)
        self.client.auth_log_in()
        self.http = requests.Session()
        r = self.http.post(f"{url}/api/v2/auth/login", data={"username": "admin", "password": password})
        assert r.status_code == 200, (label, r.status_code, r.text)

    def get(self, path, **params):
        r = self.http.get(f"{self.url}/api/v2/{path}", params=params)
        assert r.status_code == 200, (self.label, path, r.status_code, r.text)
        return r.json()

    def torrent(self):
        found = [t for t in self.client.torrents_info(torrent_hashes=HASH)]
        return found[0] if found else None

    def kind(self):
        """The state as qbittorrent-api classifies it, for either API version."""
        t = self.torrent()
        if t is None:
            return None
        s = TorrentState(t.state)
        if s.is_checking:
            return "checking"
        if s.is_stopped:
            return "stopped" + ("/complete" if s.is_complete else "")
        if s.is_uploading:
            return "seeding"
        if s.is_downloading:
            return "downloading"
        return t.state

    def capture(self):
        return {
            "torrents/info": self.get("torrents/info"),
            "torrents/properties": self.get("torrents/properties", hash=HASH),
            "torrents/files": self.get("torrents/files", hash=HASH),
            "torrents/trackers": self.get("torrents/trackers", hash=HASH),
            "torrents/categories": self.get("torrents/categories"),
            "app/preferences": self.get("app/preferences"),
            "sync/maindata": self.get("sync/maindata"),
        }


def shape(v):
    """A value's JSON shape: objects by field, arrays by their elements'
    merged shape, numbers as one type (Qt writes 1.0 as 1)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        merged = None
        for x in v:
            merged = merge(merged, shape(x))
        return [merged]
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if v is None:
        return "null"
    return "string"


def merge(a, b):
    if a is None:
        return b
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, x in b.items():
            out[k] = merge(out.get(k), x)
        return out
    return a


def differences(ref, got, path):
    """Where `got` lacks a field of `ref` or has it with another type."""
    if isinstance(ref, dict):
        if not isinstance(got, dict):
            return [f"{path}: object in qbittorrent-nox, {describe(got)} in dropseed"]
        out = []
        for k, x in ref.items():
            if k not in got:
                out.append(f"{path}.{k}: missing in dropseed (qbittorrent-nox: {describe(x)})")
            else:
                out += differences(x, got[k], f"{path}.{k}")
        return out
    if isinstance(ref, list):
        if not isinstance(got, list):
            return [f"{path}: array in qbittorrent-nox, {describe(got)} in dropseed"]
        if ref[0] is None or got[0] is None:
            return [] if ref[0] is None else [f"{path}[]: qbittorrent-nox lists items, dropseed none"]
        return differences(ref[0], got[0], f"{path}[]")
    if ref != got and ref != "null":
        return [f"{path}: {ref} in qbittorrent-nox, {describe(got)} in dropseed"]
    return []


def describe(s):
    if isinstance(s, dict):
        return "object"
    if isinstance(s, list):
        return "array"
    return str(s)


def step(name, servers, problems):
    kinds = {s.label: s.kind() for s in servers}
    if len(set(kinds.values())) != 1:
        problems.append(f"step {name}: states differ: {kinds}")
    shapes = [{k: shape(v) for k, v in s.capture().items()} for s in servers]
    ref, got = shapes
    for endpoint in ref:
        problems += [f"step {name}: {endpoint}{d}" for d in differences(ref[endpoint], got[endpoint], "")]


def main():
    ref = Server("qbittorrent-nox", env["DIFF_REF_URL"], "adminadmin", env["DIFF_REF_SAVE"])
    ours = Server("dropseed", env["DIFF_DS_URL"], env["DIFF_DS_PASSWORD"], env["DIFF_DS_SAVE"])
    servers = [ref, ours]
    problems = []
    for s in servers:
        s.client.torrents_create_category(name="tv", save_path=s.save)
        r = s.client.torrents_add(torrent_files=TORRENT, category="tv", save_path=s.save)
        assert r == "Ok.", (s.label, r)
    for s in servers:
        wait(f"{s.label} seeding", lambda: s.kind() == "seeding" and s.torrent().progress == 1)
    step("seeding", servers, problems)

    rids = [s.get("sync/maindata")["rid"] for s in servers]
    for s in servers:
        s.client.torrents_stop(torrent_hashes=HASH)
    for s in servers:
        wait(f"{s.label} stopped", lambda: s.kind() == "stopped/complete")
    # Both answer the rid they gave with a delta naming the new state (the
    # first request on that HTTP session since: qbittorrent-nox keeps one
    # snapshot per session).
    for s, rid in zip(servers, rids):
        delta = s.get("sync/maindata", rid=rid)
        changed = delta.get("torrents", {}).get(HASH, {})
        if delta.get("full_update") or "state" not in changed:
            problems.append(f"{s.label}: sync/maindata rid={rid} after stop: {json.dumps(delta)[:400]}")
    step("stopped", servers, problems)

    for s in servers:
        s.client.torrents_start(torrent_hashes=HASH)
    for s in servers:
        wait(f"{s.label} seeding again", lambda: s.kind() == "seeding")
    step("started", servers, problems)

    # Both list the same files, in the same order, with the same names.
    files = [[(f["index"], f["name"], f["size"], f["piece_range"]) for f in s.get("torrents/files", hash=HASH)]
             for s in servers]
    if files[0] != files[1]:
        problems.append(f"torrents/files differ:\n  qbittorrent-nox {files[0]}\n  dropseed        {files[1]}")
    hashes = [s.get("torrents/pieceHashes", hash=HASH) for s in servers]
    if hashes[0] != hashes[1]:
        problems.append("torrents/pieceHashes differ")
    states = [s.get("torrents/pieceStates", hash=HASH) for s in servers]
    if states[0] != states[1]:
        problems.append(f"torrents/pieceStates differ: {states}")

    if problems:
        print(f"{len(problems)} differences between qbittorrent-nox and dropseed:")
        for p in problems:
            print("  " + p)
        sys.exit(1)
    print("DIFF OK")


main()
