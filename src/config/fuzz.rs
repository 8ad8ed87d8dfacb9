//! Unit-test only. The seed corpus (`tests/corpus/`) and its mutator,
//! shared by every fuzz campaign (the target normalizer's in
//! `proxy::target`, the token validator's in `tokens::value`, the record
//! decoder's in `cache/record/fuzz.rs`), and the config loader's own campaign. The
//! reader lives here because `config` is the lowest layer of the code that
//! parses hostile bytes, so every campaign may import it.
//!
//! Each campaign replays its seeds on every test run, then feeds random
//! mutations of them (proptest, 512 cases per run; `PROPTEST_CASES=100000
//! cargo test --lib fuzz` runs a longer campaign): the parser must never
//! panic, and must either succeed with a well-formed result or fail with a
//! clear error.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

/// The proptest settings of every campaign: 512 cases (`PROPTEST_CASES`
/// overrides it), and no regression files written into the source tree.
pub(crate) fn campaign() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Lines of a corpus file with `\n`, `\r`, `\t` and `\xNN` escapes
/// decoded; `#` lines are comments.
pub(crate) fn lines(name: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(corpus_dir().join(name)).expect("corpus file");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(unescape)
        .collect()
}

fn unescape(line: &str) -> Vec<u8> {
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'x' if i + 3 < b.len() => {
                    // Bytes, not `&line[..]`: a multi-byte character after
                    // `\x` must not panic the reader.
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).ok();
                    if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                    out.push(b'\\');
                    i += 1;
                    continue;
                }
                _ => {
                    out.push(b'\\');
                    i += 1;
                    continue;
                }
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A seed with random edits: flipped bytes, inserted bytes, a cut.
pub(crate) fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    (
        0..n,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..8),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(move |(i, edits, cut, do_cut)| {
            let mut s = seeds[i].clone();
            for (at, byte, kind) in edits {
                if s.is_empty() {
                    s.push(byte);
                    continue;
                }
                let at = at.index(s.len());
                match kind {
                    0 => s[at] = byte,
                    1 => s.insert(at, byte),
                    _ => {
                        s.remove(at);
                    }
                }
            }
            if do_cut && !s.is_empty() {
                s.truncate(cut.index(s.len()));
            }
            s
        })
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir().join("config"))
        .expect("corpus/config")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("seed"))
        .collect()
}

/// The loader's contract on any input: a config, or errors that each say
/// something.
fn check_config(text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    if let Err(errors) = super::parse(&text, Path::new("/nonexistent-base")) {
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert!(!e.message.is_empty(), "empty message at {}", e.path);
        }
    }
}

#[test]
fn corpus_lines_decode_their_escapes() {
    assert_eq!(unescape(r"a\r\nb\tc"), b"a\r\nb\tc");
    assert_eq!(unescape(r"\x00\x7f\xFF"), [0, 0x7f, 0xff]);
    // What is not an escape stays as written.
    assert_eq!(unescape(r"\xzz\q\"), br"\xzz\q\");
    assert_eq!(unescape("\\xa\u{e9}"), "\\xa\u{e9}".as_bytes());
}

#[test]
fn config_seed_corpus_replays_cleanly() {
    let seeds = config_seeds();
    assert!(seeds.len() >= 4, "tests/corpus/config not read");
    for c in &seeds {
        check_config(c);
    }
}

proptest! {
    #![proptest_config(campaign())]

    #[test]
    fn config_loader_never_panics(text in mutated(config_seeds())) {
        check_config(&text);
    }
}
