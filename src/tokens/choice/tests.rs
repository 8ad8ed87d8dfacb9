//! The choice rules on made-up token sets.

use std::time::SystemTime;

use super::*;
use crate::tokens::evidence::Quota;
use crate::tokens::pool::{sticky_key, Pick};

fn token(index: usize) -> Token {
    crate::generation::upstream::testing::token(index, &format!("tok-pool-{index}"), None)
}

fn set(n: usize) -> TokenSet {
    TokenSet {
        tokens: (0..n).map(token).collect(),
        ..Default::default()
    }
}

fn reject(s: &TokenSet, i: usize) {
    s.tokens[i].mark_rejected(401, crate::tokens::ledger::Evidence::VendorSaid);
}

fn quota(s: &TokenSet, i: usize, remaining: u64, reset_in: u64, now: u64) {
    s.tokens[i].evidence.observe_quota(
        Quota {
            remaining: Some(remaining),
            limit: Some(100),
            reset_in: Some(reset_in),
        },
        now,
    );
}

fn index(s: &TokenSet, rule: Rule, tried: u64) -> Option<usize> {
    s.choose_by(rule, tried, SystemTime::now()).map(|t| t.index)
}

#[test]
fn ordered_is_the_first_usable_not_tried() {
    let s = set(3);
    assert_eq!(index(&s, Rule::Ordered, 0), Some(0));
    reject(&s, 0);
    assert_eq!(index(&s, Rule::Ordered, 0), Some(1));
    assert_eq!(index(&s, Rule::Ordered, 0b010), Some(2));
    assert_eq!(index(&s, Rule::Ordered, 0b110), None);
}

#[test]
fn rotation_spreads_evenly_over_the_usable_tokens() {
    let s = set(3);
    let turns: Vec<_> = (0..6)
        .map(|n| index(&s, Rule::Rotate(n), 0).unwrap())
        .collect();
    assert_eq!(turns, [0, 1, 2, 0, 1, 2]);
    // One out: the other two share the turns, none gets double.
    reject(&s, 1);
    let turns: Vec<_> = (0..4)
        .map(|n| index(&s, Rule::Rotate(n), 0).unwrap())
        .collect();
    assert_eq!(turns, [0, 2, 0, 2]);
    // A retry takes the next in turn after the refused one, wrapping.
    assert_eq!(index(&s, Rule::After(0), 0b001), Some(2));
    assert_eq!(index(&s, Rule::After(2), 0b100), Some(0));
    assert_eq!(index(&s, Rule::After(2), 0b101), None);
}

#[test]
fn most_remaining_follows_the_vendors_figures_unknown_counts_as_full() {
    let s = set(3);
    let now = crate::clock::unix_now();
    // Nothing known: all full, configured order breaks the tie.
    assert_eq!(index(&s, Rule::MostRemaining, 0), Some(0));
    quota(&s, 0, 10, 60, now);
    // 1 and 2 unknown (full): 1 first.
    assert_eq!(index(&s, Rule::MostRemaining, 0), Some(1));
    quota(&s, 1, 40, 60, now);
    quota(&s, 2, 70, 60, now);
    assert_eq!(index(&s, Rule::MostRemaining, 0), Some(2));
    quota(&s, 2, 40, 60, now);
    assert_eq!(
        index(&s, Rule::MostRemaining, 0),
        Some(1),
        "a tie: list order"
    );
    // A retry takes the best not tried.
    assert_eq!(index(&s, Rule::MostRemaining, 0b010), Some(2));
    // A window that has reset counts as full again.
    quota(&s, 0, 0, 0, now.saturating_sub(5));
    assert_eq!(index(&s, Rule::MostRemaining, 0), Some(0));
    assert_eq!(remaining(&s.tokens[1], SystemTime::now()), 40);
}

#[test]
fn rendezvous_keeps_a_key_on_its_token_and_moves_only_that_tokens_keys() {
    let s = set(3);
    let keys: Vec<u64> = (0..300)
        .map(|k| sticky_key(format!("session-{k}").as_bytes()))
        .collect();
    let before: Vec<usize> = keys
        .iter()
        .map(|k| index(&s, Rule::Rendezvous(*k), 0).unwrap())
        .collect();
    // The same key, the same token, every time.
    for (k, t) in keys.iter().zip(&before) {
        assert_eq!(index(&s, Rule::Rendezvous(*k), 0), Some(*t));
    }
    // Spread over all three (each gets a fair share).
    for t in 0..3 {
        let n = before.iter().filter(|b| **b == t).count();
        assert!((60..=140).contains(&n), "token {t} holds {n} of 300 keys");
    }
    // Token 1 goes: its keys move, nobody else's does.
    reject(&s, 1);
    for (k, b) in keys.iter().zip(&before) {
        let now = index(&s, Rule::Rendezvous(*k), 0).unwrap();
        if *b == 1 {
            assert_ne!(now, 1);
        } else {
            assert_eq!(now, *b, "a key not on the lost token moved");
        }
    }
    // The retry of a key is its second choice, not tried yet.
    let k = keys[0];
    let first = index(&s, Rule::Rendezvous(k), 0).unwrap();
    let second = index(&s, Rule::Rendezvous(k), 1 << first).unwrap();
    assert_ne!(first, second);
}

#[test]
fn sticky_keys_are_stable_and_differ() {
    assert_eq!(sticky_key(b"abc"), sticky_key(b"abc"));
    assert_ne!(sticky_key(b"abc"), sticky_key(b"abd"));
    // Stable across builds and replicas: a fixed key, not a random one.
    assert_eq!(weight(0, 0), weight(0, 0));
    assert_eq!(Pick::RoundRobin.as_str(), "round_robin");
}
