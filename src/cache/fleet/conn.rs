//! The fleet tier's connection to Redis: one server or a Cluster, both
//! reconnecting by themselves and multiplexed (cheap to clone); the
//! pipelined writes of copies, one pipeline per hash slot on a cluster.

use std::collections::HashMap;
use std::time::Duration;

use redis::cluster_routing::Slot;

use crate::config::{RedisConfig, RedisTarget};

/// A connection to one server or to the cluster; both reconnect by
/// themselves and are cheap to clone (multiplexed).
#[derive(Clone)]
pub(super) enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    pub(super) async fn run<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// `SET key value PX ttl` for each write: one pipeline on a single
    /// Redis; on a cluster one pipeline per hash slot (a cluster pipeline
    /// must stay in one slot), sent side by side. The first error, if any.
    pub(super) async fn set_all(&mut self, batch: &[Write]) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => set_pipeline(batch.iter()).query_async::<()>(c).await,
            Conn::Cluster(c) => {
                let mut by_slot: HashMap<Slot, Vec<&Write>> = HashMap::new();
                for w in batch {
                    by_slot.entry(Slot::for_key(&w.key)).or_default().push(w);
                }
                let mut runs = tokio::task::JoinSet::new();
                for writes in by_slot.into_values() {
                    let pipe = set_pipeline(writes.into_iter());
                    let mut c = c.clone();
                    runs.spawn(async move { pipe.query_async::<()>(&mut c).await });
                }
                let mut first_error = None;
                while let Some(done) = runs.join_next().await {
                    let result = done.unwrap_or_else(|e| {
                        Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "SET task failed",
                            e.to_string(),
                        )))
                    });
                    if let Err(e) = result {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
        }
    }
}

fn set_pipeline<'a>(writes: impl Iterator<Item = &'a Write>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for w in writes {
        let ms = w.ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        pipe.cmd("SET")
            .arg(&w.key)
            .arg(&w.value)
            .arg("PX")
            .arg(ms)
            .ignore();
    }
    pipe
}

pub(super) enum Client {
    Single(Box<redis::Client>),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// The configured nodes, for the ledger's subscriber (a Cluster
        /// passes every `PUBLISH` to all its nodes, so any one will do).
        nodes: Vec<redis::Client>,
    },
}

pub(super) struct Write {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) ttl: Duration,
}

impl Client {
    /// The client for `config`'s target (nothing is connected yet).
    pub(super) fn new(config: &RedisConfig) -> Result<Client, String> {
        let certs = || -> Result<Option<redis::TlsCertificates>, String> {
            let Some(ca) = &config.ca_file else {
                return Ok(None);
            };
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            Ok(Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            }))
        };
        Ok(match &config.target {
            RedisTarget::Single(url) => {
                let client = match certs()? {
                    Some(c) => redis::Client::build_with_tls(url.as_str(), c),
                    None => redis::Client::open(url.as_str()),
                };
                Client::Single(Box::new(client.map_err(|e| e.to_string())?))
            }
            RedisTarget::Cluster(urls) => {
                let certs = certs()?;
                let nodes = urls
                    .iter()
                    .map(|u| match &certs {
                        Some(c) => redis::Client::build_with_tls(u.as_str(), c.clone()),
                        None => redis::Client::open(u.as_str()),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let mut b =
                    redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .connection_timeout(config.timeout.max(Duration::from_millis(500)))
                        .response_timeout(config.timeout.max(Duration::from_millis(500)));
                if let Some(c) = certs {
                    b = b.certs(c);
                }
                Client::Cluster {
                    client: Box::new(b.build().map_err(|e| e.to_string())?),
                    nodes,
                }
            }
        })
    }

    /// Connects within a bound derived from `timeout` (at least 2 s).
    pub(super) async fn connect(&self, timeout: Duration) -> Result<Conn, String> {
        let limit = timeout.max(Duration::from_secs(2));
        let made = match self {
            Client::Single(c) => {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(limit))
                    .set_response_timeout(Some(limit))
                    .set_number_of_retries(1);
                tokio::time::timeout(limit * 2, c.get_connection_manager_with_config(cfg))
                    .await
                    .map(|r| r.map(Conn::Single))
            }
            Client::Cluster { client: c, .. } => {
                tokio::time::timeout(limit * 2, c.get_async_connection())
                    .await
                    .map(|r| r.map(Conn::Cluster))
            }
        };
        match made {
            Err(_) => Err("connecting timed out".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(c)) => Ok(c),
        }
    }
}

impl Client {
    /// A connection subscribed to `channel`, for the ledger's
    /// notifications: the server, or the first cluster node that answers
    /// (counting from `start`, so a reconnection tries the next one
    /// first). Each attempt within `timeout` (at least 1 s).
    pub(super) async fn subscribe(
        &self,
        channel: &str,
        timeout: Duration,
        start: usize,
    ) -> Result<redis::aio::PubSub, String> {
        let limit = timeout.max(Duration::from_secs(1));
        let nodes: Vec<&redis::Client> = match self {
            Client::Single(c) => vec![c],
            Client::Cluster { nodes, .. } => {
                let n = nodes.len().max(1);
                (0..nodes.len()).map(|i| &nodes[(start + i) % n]).collect()
            }
        };
        let mut last = "no node configured".to_string();
        for c in nodes {
            let attempt = async {
                let mut p = c.get_async_pubsub().await?;
                p.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(p)
            };
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "subscribing timed out".into(),
            }
        }
        Err(last)
    }
}

/// Whether Redis itself answered (with an error reply), as opposed to a
/// connection that failed or timed out.
pub(super) fn answered(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout())
}
