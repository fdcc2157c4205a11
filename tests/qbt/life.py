"""The life automation gives a torrent, through the PyPI client
qbittorrent-api against dropseed's qBittorrent Web API (tests/qbt_api.rs
starts the daemon and the swarms and passes everything in QBT_*).

Prints LIFE OK at the end; any failed check raises."""

import filecmp
import functools
import http.server
import os
import socket
import threading
import sys
import time

import qbittorrentapi

env = os.environ
URL, PASSWORD = env["QBT_URL"], env["QBT_PASSWORD"]
EXPECTED_DIR = env["QBT_EXPECTED_DIR"]


def wait(what, pred, timeout=120):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def info(client, h):
    found = [t for t in client.torrents_info(torrent_hashes=h)]
    return found[0] if found else None


# A wrong password is LoginFailed, as against qBittorrent.
wrong = qbittorrentapi.Client(host=URL, username="admin", password="nope")
try:
    wrong.auth_log_in()
    raise AssertionError("a wrong password logged in")
except qbittorrentapi.LoginFailed:
    pass

c = qbittorrentapi.Client(host=URL, username="admin", password=PASSWORD)
c.auth_log_in()
assert c.app_version().startswith("v"), c.app_version()
assert c.app_web_api_version() == "2.11.2"
prefs = c.app_preferences()
for key in ("save_path", "max_ratio_enabled", "max_seeding_time", "dht", "listen_port", "queueing_enabled"):
    assert key in prefs, key
assert prefs["save_path"] == os.path.dirname(EXPECTED_DIR), prefs["save_path"]

c.torrents_create_category(name="tv")
cats = c.torrents_categories()
assert "tv" in cats and cats["tv"]["savePath"] == EXPECTED_DIR, cats
assert os.path.isdir(os.path.join(env["QBT_WATCH_DIR"], "tv")), "a category is a watch folder"

r = c.torrents_add(torrent_files=env["QBT_TORRENT"], category="tv", tags="sonarr")
assert r == "Ok.", repr(r)
assert c.torrents_add(urls=env["QBT_MAGNET"], category="tv") == "Ok."
# http(s) .torrent URLs are fetched: one served on loopback, and two that
# fail (a 404 whose path carries a passkey the log must not show, and a
# port where nobody listens) answer Fails.
served = os.path.dirname(env["QBT_TORRENT"])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=web.serve_forever, daemon=True).start()
web_url = f"http://127.0.0.1:{web.server_address[1]}"
assert c.torrents_add(urls=f"{web_url}/dl/abcdefghijklmnop1234/missing.torrent") == "Fails."
assert c.torrents_add(urls=f"{web_url}/") == "Fails.", "a page that is no .torrent"
closed = socket.socket()
closed.bind(("127.0.0.1", 0))
assert c.torrents_add(urls=f"http://127.0.0.1:{closed.getsockname()[1]}/x.torrent") == "Fails."
closed.close()

by_name = {}
for name, data in (("episode.mkv", env["QBT_TORRENT_DATA"]), ("special.mkv", env["QBT_MAGNET_DATA"])):
    t = wait(f"{name} seeding", lambda: next(
        (t for t in c.torrents_info(category="tv") if t.name == name and t.state in ("stalledUP", "uploading")),
        None))
    assert t.hash == t.hash.lower() and len(t.hash) == 40
    assert t.progress == 1 and t.amount_left == 0 and t.size == os.path.getsize(data), t
    assert t.content_path == os.path.join(EXPECTED_DIR, name), (t.content_path, EXPECTED_DIR)
    assert filecmp.cmp(t.content_path, data, shallow=False), "the bytes differ"
    assert t.category == "tv" and t.added_on > 0 and t.completion_on > 0
    by_name[name] = t.hash

h = by_name["episode.mkv"]
assert [t.hash for t in c.torrents_info(status_filter="completed", category="tv", sort="name")] == \
    [by_name["episode.mkv"], by_name["special.mkv"]]
assert c.torrents_properties(torrent_hash=h)["save_path"] == EXPECTED_DIR
try:
    c.torrents_properties(torrent_hash="0" * 40)
    raise AssertionError("an unknown hash was found")
except qbittorrentapi.NotFound404Error:
    pass
assert c.torrents_webseeds(torrent_hash=h) == []
size = os.path.getsize(env["QBT_TORRENT_DATA"])
files = c.torrents_files(torrent_hash=h)
pieces = list(c.torrents_piece_hashes(torrent_hash=h))
assert len(files) == 1, files
f = files[0]
assert (f.index, f.name, f.size, f.progress, f.priority) == (0, "episode.mkv", size, 1, 1), f
assert list(f.piece_range) == [0, len(pieces) - 1] and f.is_seed is True, (f, len(pieces), pieces[:2])
assert all(len(p) == 40 for p in pieces) and len(pieces) == -(-size // (1 << 18)), len(pieces)
assert list(c.torrents_piece_states(torrent_hash=h)) == [2] * len(pieces)
props = c.torrents_properties(torrent_hash=h)
assert (props.piece_size, props.pieces_num, props.pieces_have) == (1 << 18, len(pieces), len(pieces)), props
assert props.addition_date > 0 and props.completion_date >= props.addition_date, props
assert props.last_seen > 0 and props.total_size == size, props
for call in (c.torrents_files, c.torrents_piece_states, c.torrents_piece_hashes):
    try:
        call(torrent_hash="0" * 40)
        raise AssertionError(f"{call.__name__}: an unknown hash was found")
    except qbittorrentapi.NotFound404Error:
        pass
main = c.sync_maindata()
assert main["full_update"] is True and h in main["torrents"], main
# A complete torrent has no place in the download queue: priority 0.
c.torrents_top_priority(torrent_hashes=h)
assert info(c, h).priority == 0, info(c, h).priority
try:
    c.torrents_set_category(category="movies", torrent_hashes=h)
    raise AssertionError("category changed")
except qbittorrentapi.Conflict409Error:
    pass

# Tags: given at the add, added, filtered on, removed.
assert info(c, h).tags == "sonarr", info(c, h).tags
c.torrents_add_tags(tags=["cross-seed", "keep"], torrent_hashes=h)
assert info(c, h).tags == "cross-seed, keep, sonarr", info(c, h).tags
assert set(c.torrents_tags()) >= {"cross-seed", "keep", "sonarr"}, c.torrents_tags()
assert [t.hash for t in c.torrents_info(tag="keep")] == [h]
assert [t.hash for t in c.torrents_info(tag="")] == [by_name["special.mkv"]], "the untagged"
c.torrents_remove_tags(tags="keep", torrent_hashes=h)
c.torrents_delete_tags(tags="keep")
assert "keep" not in c.torrents_tags() and info(c, h).tags == "cross-seed, sonarr"
try:
    c.torrents_add_tags(tags="bad\ttag", torrent_hashes=h)
    raise AssertionError("a tag with a control character was taken")
except qbittorrentapi.InvalidRequest400Error as e:
    assert "control character" in str(e), e

# Share limits: a seeding torrent given a ratio limit of 0 stops at once,
# as a torrent at its seeding goal: stoppedUP, which Sonarr removes.
s = by_name["special.mkv"]
assert info(c, s).ratio_limit == -2 and info(c, s).max_ratio == -1, "the config sets no limit"
c.torrents_set_share_limits(ratio_limit=0, seeding_time_limit=-1, inactive_seeding_time_limit=-2, torrent_hashes=s)
wait("stoppedUP at the ratio limit", lambda: info(c, s).state == "stoppedUP")
t = info(c, s)
assert (t.ratio_limit, t.max_ratio, t.seeding_time_limit, t.max_seeding_time) == (0, 0, -1, -1), t
c.torrents_set_share_limits(ratio_limit=-1, seeding_time_limit=-1, inactive_seeding_time_limit=-1, torrent_hashes=s)
c.torrents_start(torrent_hashes=s)
wait("seeding again without limits", lambda: info(c, s).state in ("stalledUP", "uploading"))

c.torrents_stop(torrent_hashes=h)
wait("stoppedUP", lambda: info(c, h).state == "stoppedUP")
# A delta from the rid given: only what changed, the state among it.
delta = c.sync_maindata(rid=main["rid"])
assert delta["full_update"] is False and delta["rid"] > main["rid"], delta
assert delta["torrents"][h]["state"] == "stoppedUP", delta
assert "name" not in delta["torrents"][h] and "hash" not in delta["torrents"][h], delta
assert c.sync_maindata(rid=main["rid"])["full_update"] is True, "a rid answers once"
assert [t.hash for t in c.torrents_info(status_filter="stopped")] == [h]
c.torrents_start(torrent_hashes=h)
wait("seeding again", lambda: info(c, h).state in ("stalledUP", "uploading", "checkingUP", "queuedUP"))

content = info(c, h).content_path
c.torrents_delete(delete_files=True, torrent_hashes=h)
wait("removed", lambda: info(c, h) is None)
wait("its files deleted", lambda: not os.path.exists(content))
gone = c.sync_maindata(rid=delta["rid"])
assert gone["full_update"] is False and h in gone["torrents_removed"], gone

# Added again, from its URL this time: fetched, downloaded, seeded.
name = os.path.basename(env["QBT_TORRENT"])
assert c.torrents_add(urls=f"{web_url}/{name}", category="tv") == "Ok."
again = wait("the fetched torrent seeding", lambda: (lambda t: t if t and t.state in ("stalledUP", "uploading") else None)(info(c, h)))
assert filecmp.cmp(again.content_path, env["QBT_TORRENT_DATA"], shallow=False), "the bytes differ"
web.shutdown()
assert info(c, by_name["special.mkv"]) is not None, "the other one stays"
c.auth_log_out()
print("LIFE OK")
sys.stdout.flush()
