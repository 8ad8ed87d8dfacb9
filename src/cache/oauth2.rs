//! Shared OAuth2 tokens' Redis side (`oauth2.share`; the flow and the seal
//! are `tokens::oauth2::share`): the fleet's sealed token and the lock on
//! its fetch, over the fleet tier's connection, under its breaker and
//! `cache.redis.timeout`, never on the request path (a token is read when
//! a generation is built: at start, at a refresh point, after a refusal).
//!
//! - **Keys**: `<key_prefix>oauth2:v1:{<sha256 of token URL, client id,
//!   scope, audience>}:token` and `...:lock`. The braces are a Cluster hash
//!   tag, so both live on one node.
//! - **Token**: `SET .. PX` until the token's expiry.
//! - **Lock**: `SET .. NX PX` with a value only this attempt knows; freed
//!   by a script that deletes it only while it holds that value (`EVAL`),
//!   so a holder that outlived its lock never frees the next holder's.

use std::sync::Arc;
use std::time::Duration;

use super::fleet::FleetTier;
use crate::tokens::oauth2::share::{Store, Unreachable};

/// Deletes `KEYS[1]` only while it holds `ARGV[1]`.
const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub struct OAuth2Tier {
    fleet: Arc<FleetTier>,
}

impl OAuth2Tier {
    pub fn new(fleet: Arc<FleetTier>) -> Arc<OAuth2Tier> {
        Arc::new(OAuth2Tier { fleet })
    }
}

/// `<prefix>oauth2:v1:{<hex>}:<slot>`.
pub fn key(prefix: &str, id: &[u8; 32], slot: &str) -> String {
    format!("{prefix}oauth2:v1:{{{}}}:{slot}", crate::config::hex(id))
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[async_trait::async_trait]
impl Store for OAuth2Tier {
    fn key(&self, id: &[u8; 32], slot: &str) -> String {
        key(self.fleet.key_prefix(), id, slot)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unreachable> {
        let cmd = redis::cmd("GET").arg(key).to_owned();
        let got = self
            .fleet
            .query("oauth2-get", &cmd)
            .await
            .ok_or(Unreachable)?;
        super::fleet::count("oauth2-get", "ok");
        Ok(got)
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Unreachable> {
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ms(ttl))
            .to_owned();
        self.fleet
            .query::<()>("oauth2-set", &cmd)
            .await
            .ok_or(Unreachable)?;
        super::fleet::count("oauth2-set", "ok");
        Ok(())
    }

    async fn lock(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, Unreachable> {
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl))
            .to_owned();
        let got: Option<String> = self
            .fleet
            .query("oauth2-lock", &cmd)
            .await
            .ok_or(Unreachable)?;
        super::fleet::count("oauth2-lock", "ok");
        Ok(got.is_some())
    }

    async fn unlock(&self, key: &str, holder: &str) {
        let cmd = redis::cmd("EVAL")
            .arg(UNLOCK)
            .arg(1)
            .arg(key)
            .arg(holder)
            .to_owned();
        // A lock left behind (Redis gone meanwhile) ends with its TTL.
        if self
            .fleet
            .query::<i64>("oauth2-unlock", &cmd)
            .await
            .is_some()
        {
            super::fleet::count("oauth2-unlock", "ok");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_and_its_lock_share_a_cluster_hash_tag() {
        let id = [0xcd; 32];
        let token = key("graceway:", &id, "token");
        let lock = key("graceway:", &id, "lock");
        assert_eq!(
            token,
            format!("graceway:oauth2:v1:{{{}}}:token", "cd".repeat(32))
        );
        assert_eq!(
            redis::cluster_routing::Slot::for_key(&token),
            redis::cluster_routing::Slot::for_key(&lock)
        );
    }
}
