//! A rule of [`super::pool`] applied to a token set: pure functions over
//! the tokens' states and the quota the vendor stated.
//!
//! No rule allocates or locks: each is one or two passes over a list of
//! at most [`crate::config::MAX_TOKENS`] tokens, reading relaxed atomics.

use std::time::SystemTime;

use super::pool::{weight, Rule};
use super::set::{Token, TokenSet};

/// The quota `t` has left as far as graceway knows: what the vendor last
/// stated, or "full" (`u64::MAX`) when it stated none yet or its window
/// has reset since, so that an unknown token is tried and its quota learned.
pub fn remaining(t: &Token, now: SystemTime) -> u64 {
    match t.evidence.quota() {
        None => u64::MAX,
        Some((_, _, Some(reset))) if reset <= now => u64::MAX,
        Some((left, _, _)) => left,
    }
}

impl TokenSet {
    /// The usable token not in `tried` (a bit per index) that `rule`
    /// chooses; `None` when none is usable.
    pub fn choose_by(&self, rule: Rule, tried: u64, now: SystemTime) -> Option<&Token> {
        let open =
            |t: &&Token| t.index < 64 && tried & (1 << t.index) == 0 && t.state(now).usable();
        match rule {
            Rule::Ordered => self.tokens.iter().find(open),
            Rule::Rotate(n) => {
                let count = self.tokens.iter().filter(open).count();
                (count > 0)
                    .then(|| self.tokens.iter().filter(open).nth(n % count))
                    .flatten()
            }
            Rule::After(index) => {
                let start = (index + 1).min(self.tokens.len());
                let (before, after) = self.tokens.split_at(start);
                after.iter().chain(before).find(open)
            }
            // Ties go to configured order: `max_by_key` keeps the last
            // maximum, so the list is walked from its end.
            Rule::MostRemaining => self
                .tokens
                .iter()
                .rev()
                .filter(open)
                .max_by_key(|t| remaining(t, now)),
            Rule::Rendezvous(key) => self
                .tokens
                .iter()
                .filter(open)
                .max_by_key(|t| weight(key, t.index)),
        }
    }
}

#[cfg(test)]
mod tests;
