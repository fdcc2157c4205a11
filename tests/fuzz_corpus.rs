//! Replays the fuzz corpus on the stable toolchain (issue #11).
//!
//! `cargo fuzz` needs nightly and minutes; this test needs neither. It feeds
//! every file of `fuzz/corpus/<target>/`, and of `fuzz/artifacts-found/<target>/`
//! (inputs that once broke a decoder), to the very function the fuzz target
//! runs, from `fuzz/targets.rs`, so each decoder keeps refusing hostile input
//! without a panic between fuzzing sessions. A target whose corpus is missing
//! or empty fails the test rather than passing by having nothing to replay.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_has_a_replayed_corpus() {
    let mut listed: Vec<&str> = targets::ALL.iter().map(|(name, _)| *name).collect();
    listed.sort();
    let mut on_disk: Vec<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, listed, "fuzz/fuzz_targets/ and targets::ALL must name the same targets");
}

#[test]
fn corpus_and_found_inputs_never_panic() {
    let mut failures = Vec::new();
    for &(name, run) in targets::ALL {
        let corpus = files_in(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is missing or empty");
        let found = files_in(&fuzz_dir().join("artifacts-found").join(name));
        for file in corpus.iter().chain(&found) {
            let data = std::fs::read(file).unwrap();
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
                let why = e.downcast_ref::<String>().cloned().or(e.downcast_ref::<&str>().map(|s| s.to_string()));
                failures.push(format!("{name}: {}: {}", file.display(), why.unwrap_or_default()));
            }
        }
    }
    assert!(failures.is_empty(), "inputs that panic:\n{}", failures.join("\n"));
}
