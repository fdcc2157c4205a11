"""torrents/setLocation through the PyPI client qbittorrent-api against
dropseed (tests/qbt_api.rs starts the daemon and passes everything in
QBT_*): a seeding torrent's data moves to another folder on the same
filesystem (a rename), then to another filesystem (a verified copy), every
byte compared at the new content_path; a cross-seed sharing the data is
refused with 409, and so is the torrent whose data it shares.

Prints MOVE OK at the end; any failed check raises."""

import filecmp
import os
import sys
import time

import qbittorrentapi

env = os.environ
URL, PASSWORD = env["QBT_URL"], env["QBT_PASSWORD"]


def wait(what, pred, timeout=60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def info(client, h):
    found = [t for t in client.torrents_info(torrent_hashes=h)]
    return found[0] if found else None


def same_tree(expected, actual):
    for root, _dirs, files in os.walk(expected):
        for f in files:
            e = os.path.join(root, f)
            a = os.path.join(actual, os.path.relpath(e, expected))
            assert filecmp.cmp(e, a, shallow=False), f"{a} differs from {e}"


def seeding_at(c, h, folder):
    def there():
        t = info(c, h)
        ok = t and t.state in ("stalledUP", "uploading") and t.save_path == folder
        return t if ok else None
    return wait(f"seeding in {folder}", there)


c = qbittorrentapi.Client(host=URL, username="admin", password=PASSWORD)
c.auth_log_in()
original = env["QBT_DATA"]
assert c.torrents_add(torrent_files=env["QBT_TORRENT"]) == "Ok."
h = env["QBT_HASH"]
t = seeding_at(c, h, env["QBT_DOWNLOAD_DIR"])
start = t.content_path
name = os.path.basename(start)

# The same filesystem: one rename.
same_fs = env["QBT_SAME_FS"]
c.torrents_set_location(location=same_fs, torrent_hashes=h)
t = seeding_at(c, h, same_fs)
assert t.content_path == os.path.join(same_fs, name), t.content_path
assert c.torrents_properties(torrent_hash=h).save_path == same_fs
same_tree(original, t.content_path)
assert not os.path.exists(start), "the old copy stays"

# Another filesystem without the room: the move is given up, the data
# stays whole where it was and is seeded from there.
other_fs = env["QBT_OTHER_FS"]
st = os.statvfs(other_fs)
filler = os.path.join(other_fs, "filler")
with open(filler, "wb") as f:
    f.write(b"\0" * (st.f_bavail * st.f_frsize - 64 * 1024))


def log():
    with open(env["QBT_LOG"]) as f:
        return f.read()


c.torrents_set_location(location=other_fs, torrent_hashes=h)
wait("the failed move logged", lambda: "cannot move to another folder" in log())
line = next(l for l in log().splitlines() if "cannot move to another folder" in l)
assert "No space left" in line and same_fs in line, line
t = seeding_at(c, h, same_fs)
same_tree(original, t.content_path)
assert sorted(os.listdir(other_fs)) == ["filler"], os.listdir(other_fs)
os.remove(filler)

# Another filesystem: copied, verified, renamed in, the source removed.
c.torrents_set_location(location=other_fs, torrent_hashes=h)
t = seeding_at(c, h, other_fs)
assert t.content_path == os.path.join(other_fs, name), t.content_path
same_tree(original, t.content_path)
assert not os.path.exists(os.path.join(same_fs, name)), "the source stays after the copy"
assert [n for n in os.listdir(other_fs) if n.startswith(".")] == [], "a hidden copy is left"

# A stopped torrent moves at once and stays stopped; started, it seeds
# from there; and back again.
c.torrents_stop(torrent_hashes=h)
wait("stopped", lambda: info(c, h).state == "stoppedUP")
c.torrents_set_location(location=same_fs, torrent_hashes=h)
wait("moved while stopped", lambda: (lambda t: t.save_path == same_fs and t.state == "stoppedUP")(info(c, h)))
same_tree(original, os.path.join(same_fs, name))
assert not os.path.exists(os.path.join(other_fs, name))
c.torrents_start(torrent_hashes=h)
seeding_at(c, h, same_fs)
c.torrents_set_location(location=other_fs, torrent_hashes=h)
t = seeding_at(c, h, other_fs)
same_tree(original, t.content_path)

# A path outside the allowed folders: 400 naming them; nothing moves.
try:
    c.torrents_set_location(location="/etc", torrent_hashes=h)
    raise AssertionError("moved to /etc")
except qbittorrentapi.InvalidRequest400Error as e:
    assert "outside the folders" in str(e), e

# A cross-seed of the same data: it and the torrent it shares with stay.
assert c.torrents_add(torrent_files=env["QBT_CROSS_TORRENT"], savepath=other_fs) == "Ok."
x = env["QBT_CROSS_HASH"]
wait("the cross-seed seeding", lambda: (info(c, x) or {}).get("state") in ("stalledUP", "uploading"))
for who, says in ((x, "cross-seed"), (h, x[:8])):
    try:
        c.torrents_set_location(location=same_fs, torrent_hashes=who)
        raise AssertionError(f"{who} moved with its data shared")
    except qbittorrentapi.Conflict409Error as e:
        assert says in str(e), e
assert info(c, h).content_path == os.path.join(other_fs, name)
c.torrents_delete(delete_files=False, torrent_hashes=x)
wait("the cross-seed removed", lambda: info(c, x) is None)
print("MOVE OK")
sys.stdout.flush()
