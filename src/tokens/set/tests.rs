//! Unit tests of the token set: picking, states, evidence.

use super::*;

fn token(index: usize, value: &str) -> Token {
    crate::generation::upstream::testing::token(index, value, None)
}

#[test]
fn trials_cycle_through_the_rejected_tokens_only() {
    let set = TokenSet {
        tokens: (0..4).map(|i| token(i, &format!("tok-{i}"))).collect(),
        ..Default::default()
    };
    let now = SystemTime::now();
    assert!(set.trial_token(0, now).is_none(), "nothing rejected");
    set.tokens[1].mark_rejected(401, super::super::ledger::Evidence::VendorSaid);
    set.tokens[3].mark_rejected(403, super::super::ledger::Evidence::VendorSaid);
    let picks: Vec<usize> = (0..5)
        .map(|n| set.trial_token(n, now).unwrap().index)
        .collect();
    assert_eq!(picks, vec![1, 3, 1, 3, 1]);
    // The first usable token skips tried and rejected ones.
    assert_eq!(set.pick(0, now).unwrap().index, 0);
    assert_eq!(set.pick(1, now).unwrap().index, 2);
    assert!(set.pick(0b0101, now).is_none());
}

#[test]
fn a_suspect_token_is_still_used_and_a_second_path_confirms() {
    let t = token(0, "tok-s");
    assert_eq!(t.evidence.suspect(7, 100), Suspicion::First);
    assert_eq!(t.state(SystemTime::now()), TokenState::Suspect);
    assert!(t.state(SystemTime::now()).usable());
    assert_eq!(t.evidence.suspect(7, 101), Suspicion::SamePath);
    assert_eq!(t.evidence.suspect(8, 102), Suspicion::OtherPath);
    // A suspicion older than the window starts over.
    assert_eq!(
        t.evidence.suspect(9, 102 + SUSPECT_WINDOW_SECS + 1),
        Suspicion::First
    );
    assert!(t.evidence.clear_suspect());
    assert_eq!(t.state(SystemTime::now()), TokenState::Active);
}
