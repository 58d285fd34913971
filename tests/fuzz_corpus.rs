//! The fuzz targets' kept corpora (fuzz/corpus/NAME: seeds from the test
//! transcripts and what the fuzzer found worth keeping, minimised) and
//! every input that once was a finding (fuzz/regressions/NAME, kept
//! whatever a minimisation says) replayed through the same bodies the
//! fuzzer runs
//! (`smtpsink::fuzzing`), so the normal suite keeps them passing without a
//! nightly toolchain. `scripts/fuzz.sh` runs the fuzzer itself.

use std::path::Path;

#[test]
fn every_kept_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, target) in smtpsink::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {name}");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name}: {} fails", f.display());
        }
        total += files.len();
    }
    assert!(total >= smtpsink::fuzzing::TARGETS.len());
}

#[test]
fn every_past_finding_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut total = 0;
    for (name, target) in smtpsink::fuzzing::TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for f in dir {
            let f = f.unwrap().path();
            let data = std::fs::read(&f).unwrap();
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name}: {} fails again", f.display());
            total += 1;
        }
    }
    assert!(total >= 1, "the findings are kept");
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (name, _) in smtpsink::fuzzing::TARGETS {
        let src = std::fs::read_to_string(dir.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(src.contains("smtpsink::fuzzing::"), "{name}");
    }
}
