//! Where a store lives and how to talk to it: the subset of redis-rb's client options the core
//! needs. The Ruby side normalises every accepted form (a `::Redis`, a URL, an options Hash)
//! through redis-rb's own option parser and hands the result here.

use std::fmt;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix { path: String },
}

impl Address {
    /// `host:port` or the socket path, as redis-rb's `Client#location` prints it.
    pub fn location(&self) -> String {
        match self {
            Address::Tcp { host, port } => format!("{host}:{port}"),
            Address::Unix { path } => path.clone(),
        }
    }
}

/// Long enough to catch a same-host server's reply (20–30 µs here), short enough that a miss
/// costs less than the round trip it precedes.
pub const DEFAULT_SPIN_WAIT: Duration = Duration::from_micros(50);

#[derive(Clone)]
pub struct StoreConfig {
    pub address: Address,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    /// redis-rb's `:id`: sent as CLIENT SETNAME and used as the store's id.
    pub client_name: Option<String>,
    pub ssl: bool,
    /// Certificates for `ssl` (defaults: verify against the Mozilla roots).
    pub tls: crate::transport::tls::TlsConfig,
    /// `None` waits forever, as redis-rb does for a timeout of 0.
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// How many times a command is retried on a fresh connection after a connection error
    /// (redis-rb's `reconnect_attempts`, 1 by default).
    pub reconnect_attempts: u32,
    /// Idle connections kept per store; more are opened when more threads call at once.
    pub pool_size: usize,
    /// How long a connection may poll for a reply before sleeping on it (see `spin_wait`);
    /// zero never polls.
    pub spin_wait: Duration,
    /// Behind Redis Sentinel: `address` is then only where the last resolution pointed.
    pub sentinel: Option<SentinelConfig>,
    /// A Redis Cluster: `address` is then its first configured node.
    pub cluster: Option<ClusterConfig>,
    /// A key namespace (`Redis::Namespace`): keys are sent as `<namespace>:<key>`.
    pub namespace: Option<crate::protocol::namespace::Namespace>,
}

impl StoreConfig {
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Self::new(Address::Tcp {
            host: host.into(),
            port,
        })
    }

    pub fn unix(path: impl Into<String>) -> Self {
        Self::new(Address::Unix { path: path.into() })
    }

    fn new(address: Address) -> Self {
        let five_seconds = Some(Duration::from_secs(5));
        Self {
            address,
            db: 0,
            username: None,
            password: None,
            client_name: None,
            ssl: false,
            tls: crate::transport::tls::TlsConfig {
                verify: true,
                verify_hostname: true,
                ..Default::default()
            },
            connect_timeout: five_seconds,
            read_timeout: five_seconds,
            write_timeout: five_seconds,
            reconnect_attempts: 1,
            pool_size: 16,
            spin_wait: DEFAULT_SPIN_WAIT,
            sentinel: None,
            cluster: None,
            namespace: None,
        }
    }

    /// redis-rb's `Client#id`: the configured `:id`, else a URL without credentials.
    pub fn id(&self) -> String {
        if let Some(name) = &self.client_name {
            return name.clone();
        }
        if let Some(cluster) = &self.cluster {
            // redis-rb's `Cluster#id`: its nodes' ids, sorted, joined by a space.
            let mut ids: Vec<String> = cluster
                .seeds
                .iter()
                .map(|address| {
                    let mut node = self.clone();
                    node.cluster = None;
                    node.address = address.clone();
                    node.db = 0;
                    node.id()
                })
                .collect();
            ids.sort();
            return ids.join(" ");
        }
        let scheme = match (&self.address, self.ssl) {
            (Address::Unix { .. }, _) => "unix",
            (_, true) => "rediss",
            (_, false) => "redis",
        };
        format!("{scheme}://{}/{}", self.address.location(), self.db)
    }

    /// Two configs reach the same data when they name the same server and database.
    pub fn same_data_as(&self, other: &StoreConfig) -> bool {
        let same_server = match (
            &self.sentinel,
            &other.sentinel,
            &self.cluster,
            &other.cluster,
        ) {
            (Some(a), Some(b), _, _) => {
                a.master_name == b.master_name && a.sentinels == b.sentinels
            }
            // Any node in common is the same cluster.
            (None, None, Some(a), Some(b)) => a.seeds.iter().any(|s| b.seeds.contains(s)),
            (None, None, None, None) => self.address == other.address,
            _ => false,
        };
        // One server and database holds as many partitions as namespaces.
        same_server && self.db == other.db && self.namespace == other.namespace
    }
}

/// Never prints the password: configs end up in logs and exception messages.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("id", &self.id())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[FILTERED]"))
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish()
    }
}

/// A sentinel to ask where the master is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelNode {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentinelRole {
    Master,
    Replica,
}

/// A store reached through Redis Sentinel: the sentinels asked, and which of the monitored
/// master's servers to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    pub sentinels: Vec<SentinelNode>,
    /// The name the sentinels monitor the master under (redis-rb's `host` with `sentinels:`).
    pub master_name: String,
    pub role: SentinelRole,
}

/// A Redis Cluster store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The nodes given in the configuration: where the slot map is first asked for.
    pub seeds: Vec<Address>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_matches_redis_rb_and_debug_hides_the_password() {
        let mut config = StoreConfig::tcp("127.0.0.1", 6380);
        config.db = 2;
        config.password = Some("s3cret".into());
        assert_eq!(config.id(), "redis://127.0.0.1:6380/2");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(
            StoreConfig::unix("/tmp/r.sock").id(),
            "unix:///tmp/r.sock/0"
        );
    }
}
