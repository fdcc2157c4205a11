//! Micro-benchmarks of the hot paths: the wire codec, the piece picker,
//! piece hashing, copies into and out of storage, and what an announce
//! writes before it goes out. Run: `cargo bench`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dropseed::config::BackendKind;
use dropseed::metainfo::Metainfo;
use dropseed::storage::TorrentStorage;
use dropseed::torrent::picker::Picker;
use dropseed::types::Bitfield;
use dropseed::wire::{self, BlockRef, Message};
use sha1::{Digest, Sha1};
use std::net::SocketAddr;

fn codec(c: &mut Criterion) {
    let block = vec![7u8; 16384];
    let mut encoded = Vec::new();
    for i in 0..64 {
        wire::encode(&Message::Piece { piece: 1, offset: i * 16384, data: &block }, &mut encoded);
    }
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("decode 64 piece messages", |b| {
        b.iter(|| {
            let mut pos = 0;
            while let Ok(Some((msg, used))) = wire::decode(&encoded[pos..]) {
                std::hint::black_box(&msg);
                pos += used;
            }
        })
    });
    g.bench_function("encode 64 requests", |b| {
        let mut out = Vec::with_capacity(64 * 17);
        b.iter(|| {
            out.clear();
            for i in 0..64 {
                wire::encode(&Message::Request(BlockRef { piece: 3, offset: i * 16384, len: 16384 }), &mut out);
            }
            std::hint::black_box(&out);
        })
    });
    g.finish();
}

fn picker(c: &mut Criterion) {
    // 1 GiB in 1 MiB pieces: pick every block of a piece and feed it back.
    let pieces = 1024usize;
    let plen = 1u64 << 20;
    let all = Bitfield::full(pieces);
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let block = vec![0u8; 16384];
    let mut g = c.benchmark_group("picker");
    g.throughput(Throughput::Bytes(plen));
    g.bench_function("pick and receive one 1 MiB piece", |b| {
        b.iter_batched(
            || {
                let mut p = Picker::new(plen, plen * pieces as u64, &Bitfield::new(pieces), 64 << 20, 1);
                p.peer_bitfield(&all, true);
                p
            },
            |mut p| {
                let mut out = Vec::with_capacity(64);
                p.pick(peer, &all, 64, &|_| false, &mut out);
                for r in &out {
                    std::hint::black_box(p.block_received(peer, r.piece, r.offset, &block));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let piece = vec![0x5au8; 1 << 20];
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(piece.len() as u64));
    g.bench_function("sha1 of a 1 MiB piece", |b| b.iter(|| std::hint::black_box(Sha1::digest(&piece))));
    g.finish();
}

fn encryption(c: &mut Criterion) {
    let mut g = c.benchmark_group("mse");
    let mut piece = vec![7u8; 1 << 20];
    g.throughput(Throughput::Bytes(piece.len() as u64));
    let mut rc4 = dropseed::mse::Rc4Stream::new(&[9; 20]);
    g.bench_function("rc4 over a 1 MiB piece", |b| b.iter(|| rc4.apply(std::hint::black_box(&mut piece))));
    g.finish();
    let mut rng = rand::thread_rng();
    c.bench_function("mse: 768-bit key pair and shared secret", |b| {
        b.iter(|| {
            let (a, z) =
                (dropseed::mse::dh::KeyPair::generate(&mut rng), dropseed::mse::dh::KeyPair::generate(&mut rng));
            std::hint::black_box(a.shared(&z.public).unwrap())
        })
    });
}

fn storage(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let pieces = 64;
    let info = format!(
        "d6:lengthi{}e4:name5:s.bin12:piece lengthi1048576e6:pieces{}:{}e",
        pieces << 20,
        pieces * 20,
        "a".repeat(pieces * 20)
    );
    let torrent = format!("d4:info{info}e");
    let meta = Metainfo::from_torrent_bytes(torrent.as_bytes()).unwrap();
    let piece = vec![0x11u8; 1 << 20];
    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Bytes(piece.len() as u64));
    for kind in [BackendKind::Mmap, BackendKind::File] {
        let place = dropseed::storage::Place::new(dir.path(), "", &meta.name, false);
        let s = TorrentStorage::open(&place, &meta, kind).unwrap();
        let mut i = 0u64;
        g.bench_function(format!("{kind:?} write 1 MiB piece"), |b| {
            b.iter(|| {
                s.write((i % pieces as u64) << 20, &piece).unwrap();
                i += 1;
            })
        });
        let mut buf = vec![0u8; 16384];
        g.bench_function(format!("{kind:?} read 64 blocks"), |b| {
            b.iter(|| {
                for k in 0..64u64 {
                    s.read(k * 16384, &mut buf).unwrap();
                }
            })
        });
    }
    g.finish();
}

/// What keeps an announce's time across a kill -9: the resume record saved
/// (write, fsync, rename, fsync of the folder), as every announce did, or a
/// line in the announce journal, as a re-announce does now. The state
/// folder holds 2,000 other records, as a daemon's does.
fn announce_time(c: &mut Criterion) {
    use dropseed::resume::ResumeRecord;
    use dropseed::tracker::journal::Journal;
    use dropseed::types::InfoHash;
    let dir = tempfile::tempdir().unwrap();
    let mut record = ResumeRecord::default();
    record.have = vec![0xff; 64];
    record.piece_count = 512;
    for i in 0..2000u32 {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(&i.to_be_bytes());
        record.save(dir.path(), &InfoHash(h)).unwrap();
    }
    let hash = InfoHash([0xaa; 20]);
    let mut g = c.benchmark_group("announce time");
    g.sample_size(20);
    g.bench_function("resume record saved", |b| b.iter(|| record.save(dir.path(), &hash).unwrap()));
    let journal = Journal::new(dir.path());
    let mut at = 0;
    g.bench_function("journal line", |b| {
        b.iter(|| {
            at += 1;
            journal.note(hash, at).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, codec, picker, hashing, encryption, storage, announce_time);
criterion_main!(benches);
