//! Single-core SHA-1 throughput of the `sha1` crate on this machine, the
//! yardstick the benchmark compares hashing and rechecks against.
//! Prints bytes per second.

use sha1::{Digest, Sha1};
use std::time::Instant;

fn main() {
    let buf = vec![0x5au8; 1 << 20];
    // Warm up, then hash 512 MiB in 1 MiB pieces as the engine does.
    for _ in 0..16 {
        std::hint::black_box(Sha1::digest(&buf));
    }
    let rounds = 512;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(Sha1::digest(&buf));
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{:.0}", (rounds as f64 * buf.len() as f64) / secs);
}
