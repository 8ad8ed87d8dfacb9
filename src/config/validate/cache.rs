//! `cache`: the memory tier's sizes, the persist file, the fleet tier
//! (`cache.redis`) and collapsed forwarding (`cache.coalesce`).

use super::*;

/// `cache`: the last-good cache and its tiers.
pub(super) fn cache(c: &mut Check, cf: FileCache) -> CacheConfig {
    let d = CacheConfig::default();
    let cache = CacheConfig {
        memory_bytes: c.size("cache.memory_bytes", &cf.memory_bytes, d.memory_bytes),
        max_object_bytes: c.size(
            "cache.max_object_bytes",
            &cf.max_object_bytes,
            d.max_object_bytes,
        ),
        persist_path: match cf.persist {
            None => d.persist_path,
            Some(FilePersist { path: Some(p) }) => Some(c.path(&p)),
            Some(FilePersist { path: None }) => {
                c.err("cache.persist.path", "is required when `persist` is set");
                None
            }
        },
        redis: cf.redis.map(|r| redis_config(c, r)).or(d.redis),
        sensitive_query: match cf.sensitive_query {
            None => d.sensitive_query,
            Some(list) => list
                .into_iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    let n = n.trim().to_ascii_lowercase();
                    if n.is_empty() || n.contains(['&', '=', '?', '#']) {
                        c.err(
                            format!("cache.sensitive_query[{i}]"),
                            "must be a query parameter name",
                        );
                        None
                    } else {
                        Some(n)
                    }
                })
                .collect(),
        },
        coalesce: coalesce(c, cf.coalesce.unwrap_or_default()),
    };
    if cache.coalesce.fleet && cache.redis.is_none() {
        c.err(
            "cache.coalesce.fleet",
            "needs `cache.redis` (the fleet's lock lives there)",
        );
    }
    if cache.coalesce.fleet && cache.coalesce.wait.is_zero() {
        c.err(
            "cache.coalesce.fleet",
            "needs `cache.coalesce.wait` above 0 (it bounds the fleet's lock)",
        );
    }
    if cache.max_object_bytes > cache.memory_bytes {
        c.err(
            "cache.max_object_bytes",
            "must not exceed cache.memory_bytes",
        );
    }
    if cache.max_object_bytes > u32::MAX as u64 / 2 {
        c.err("cache.max_object_bytes", "must be below 2GiB");
    }
    cache
}

/// `cache.coalesce`: collapsed forwarding.
fn coalesce(c: &mut Check, f: FileCoalesce) -> CoalesceConfig {
    let d = CoalesceConfig::default();
    CoalesceConfig {
        wait: c.duration("cache.coalesce.wait", &f.wait, d.wait),
        fleet: f.fleet.unwrap_or(d.fleet),
    }
}

/// `cache.redis`: exactly one of `url` and `cluster`, every URL parsed by
/// the Redis client itself (scheme, user, password, database number).
fn redis_config(c: &mut Check, r: FileRedis) -> RedisConfig {
    let check_url = |c: &mut Check, path: String, u: &str| {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            c.err(
                path,
                format!(
                    "`{}` must start with redis:// or rediss://",
                    RedisTarget::Single(u.into()).redacted()
                ),
            );
        } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(u) {
            c.err(
                path,
                format!("`{}`: {e}", RedisTarget::Single(u.into()).redacted()),
            );
        }
    };
    let target = match (r.url, r.cluster) {
        (Some(u), None) => {
            check_url(c, "cache.redis.url".into(), &u);
            RedisTarget::Single(u)
        }
        (None, Some(nodes)) => {
            if nodes.is_empty() {
                c.err("cache.redis.cluster", "must list at least one node");
            }
            for (i, u) in nodes.iter().enumerate() {
                check_url(c, format!("cache.redis.cluster[{i}]"), u);
            }
            RedisTarget::Cluster(nodes)
        }
        (Some(_), Some(_)) => {
            c.err("cache.redis", "set either `url` or `cluster`, not both");
            RedisTarget::Single(String::new())
        }
        (None, None) => {
            c.err(
                "cache.redis",
                "`url` (one server) or `cluster` (seed nodes) is required",
            );
            RedisTarget::Single(String::new())
        }
    };
    let key_prefix = r
        .key_prefix
        .unwrap_or_else(|| defaults::REDIS_KEY_PREFIX.into());
    if key_prefix.len() > 64
        || key_prefix
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ')
    {
        c.err(
            "cache.redis.key_prefix",
            "at most 64 characters, no spaces or control characters",
        );
    }
    RedisConfig {
        target,
        timeout: c.positive_duration("cache.redis.timeout", &r.timeout, defaults::REDIS_TIMEOUT),
        key_prefix,
        // Read in `super::files`, not here.
        ca_file: r.ca_file.as_deref().map(|p| c.path(p)),
        queue: c.at_least_one("cache.redis.queue", r.queue, defaults::REDIS_QUEUE),
        ledger: r.ledger.unwrap_or(defaults::REDIS_LEDGER),
        // Read and parsed in `super::files`, not here.
        secret_file: r.secret_file.as_deref().map(|p| c.path(p)),
    }
}
