//! A store's options Hash (already normalised by redis-rb's own option parser on the Ruby side)
//! as the core's `StoreConfig`.

use gitlab_multistore::seconds::Wait;
use gitlab_multistore::transport::config::ClusterConfig;
use gitlab_multistore::transport::config::{SentinelConfig, SentinelNode, SentinelRole};
use gitlab_multistore::StoreConfig;
use magnus::{prelude::*, Error, RArray, RHash, RString, Ruby, TryConvert};
use std::time::Duration;

pub fn store_config(ruby: &Ruby, options: RHash) -> Result<StoreConfig, Error> {
    let get = |key: &str| options.get(ruby.to_symbol(key));
    let fetch = |key: &str| -> Result<Option<magnus::Value>, Error> {
        Ok(get(key).filter(|v| !v.is_nil()))
    };
    let string = |key: &str| -> Result<Option<String>, Error> {
        fetch(key)?.map(String::try_convert).transpose()
    };

    let mut config = match string("path")? {
        Some(path) => StoreConfig::unix(path),
        None => {
            let host = string("host")?.unwrap_or_else(|| "127.0.0.1".into());
            let port = fetch("port")?
                .map(u16::try_convert)
                .transpose()?
                .unwrap_or(6379);
            StoreConfig::tcp(host, port)
        }
    };
    config.db = fetch("db")?.map(i64::try_convert).transpose()?.unwrap_or(0);
    config.username = string("username")?;
    config.password = string("password")?;
    config.client_name = string("id")?;
    config.ssl = fetch("ssl")?.is_some_and(|v| v.to_bool());
    config.connect_timeout = timeout(fetch("connect_timeout")?, config.connect_timeout)?;
    config.read_timeout = timeout(fetch("read_timeout")?, config.read_timeout)?;
    config.write_timeout = timeout(fetch("write_timeout")?, config.write_timeout)?;
    if let Some(attempts) = fetch("reconnect_attempts")? {
        config.reconnect_attempts = u32::try_convert(attempts)?;
    }
    if let Some(size) = fetch("pool_size")? {
        config.pool_size = usize::try_convert(size)?;
    }
    if let Some(seconds) = fetch("spin_wait")? {
        let seconds = f64::try_convert(seconds)?;
        if !(0.0..=0.01).contains(&seconds) {
            return Err(Error::new(
                ruby.exception_arg_error(),
                "spin_wait must be between 0 and 0.01 seconds",
            ));
        }
        config.spin_wait = gitlab_multistore::seconds::saturating(seconds);
    }
    if let Some(params) = fetch("ssl_params")? {
        let params = RHash::try_convert(params)?;
        let pem = |key: &str| -> Result<Option<Vec<u8>>, Error> {
            match params.get(ruby.to_symbol(key)).filter(|v| !v.is_nil()) {
                // SAFETY: copied at once.
                Some(v) => Ok(Some(
                    unsafe { RString::try_convert(v)?.as_slice() }.to_vec(),
                )),
                None => Ok(None),
            }
        };
        config.tls.ca_pem = pem("ca_pem")?;
        config.tls.cert_pem = pem("cert_pem")?;
        config.tls.key_pem = pem("key_pem")?;
        if let Some(verify) = params.get(ruby.to_symbol("verify")) {
            config.tls.verify = verify.to_bool();
        }
        if let Some(verify_hostname) = params.get(ruby.to_symbol("verify_hostname")) {
            config.tls.verify_hostname = verify_hostname.to_bool();
        }
    }
    if let Some(sentinels) = fetch("sentinels")? {
        config.sentinel = Some(sentinel_config(
            ruby,
            RArray::try_convert(sentinels)?,
            &config,
            string("role")?,
        )?);
    }
    if let Some(nodes) = fetch("cluster")? {
        config.cluster = Some(cluster_config(ruby, RArray::try_convert(nodes)?)?);
        if let Some(first) = config.cluster.as_ref().and_then(|c| c.seeds.first()) {
            config.address = first.clone();
        }
    }
    if let Some(namespace) = fetch("namespace")? {
        let namespace = RString::try_convert(namespace)?;
        // SAFETY: copied at once.
        let name = unsafe { namespace.as_slice() }.to_vec();
        if config.cluster.is_some() {
            // A cluster routes by the hash slot of the key as sent, which the prefix changes.
            return Err(Error::new(
                ruby.exception_arg_error(),
                "a Redis::Namespace over a Redis Cluster client is not supported as a store",
            ));
        }
        config.namespace = Some(gitlab_multistore::protocol::namespace::Namespace::new(
            &name,
        ));
    }
    if config.pool_size == 0 {
        return Err(Error::new(
            ruby.exception_arg_error(),
            "pool_size must be positive",
        ));
    }
    Ok(config)
}

/// redis-rb's sentinel options: `sentinels: [{ host:, port:, password: }]`, the master's name in
/// `host`, `role: :master` (default) or `:slave`/`:replica`.
fn sentinel_config(
    ruby: &Ruby,
    sentinels: RArray,
    config: &StoreConfig,
    role: Option<String>,
) -> Result<SentinelConfig, Error> {
    let master_name = match &config.address {
        gitlab_multistore::Address::Tcp { host, .. } => host.clone(),
        gitlab_multistore::Address::Unix { path } => path.clone(),
    };
    let mut nodes = Vec::with_capacity(sentinels.len());
    for i in 0..sentinels.len() {
        let node: RHash = sentinels.entry(i as isize)?;
        let field = |key: &str| -> Result<Option<magnus::Value>, Error> {
            let value = node
                .get(ruby.to_symbol(key))
                .or_else(|| node.get(ruby.str_new(key)));
            Ok(value.filter(|v| !v.is_nil()))
        };
        let host = field("host")?
            .map(String::try_convert)
            .transpose()?
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = field("port")?
            .map(u16::try_convert)
            .transpose()?
            .unwrap_or(26379);
        nodes.push(SentinelNode {
            host,
            port,
            username: field("username")?.map(String::try_convert).transpose()?,
            password: field("password")?.map(String::try_convert).transpose()?,
        });
    }
    let role = match role.as_deref() {
        None | Some("master") => SentinelRole::Master,
        Some("slave") | Some("replica") => SentinelRole::Replica,
        Some(other) => {
            return Err(Error::new(
                ruby.exception_arg_error(),
                format!("Unknown instance role {other}"),
            ));
        }
    };
    Ok(SentinelConfig {
        sentinels: nodes,
        master_name,
        role,
    })
}

/// The cluster's nodes as the Ruby side normalised them: `[{ host:, port: }, …]`.
fn cluster_config(ruby: &Ruby, nodes: RArray) -> Result<ClusterConfig, Error> {
    let mut seeds = Vec::with_capacity(nodes.len());
    for i in 0..nodes.len() {
        let node: RHash = nodes.entry(i as isize)?;
        let host: String = node
            .get(ruby.to_symbol("host"))
            .map(String::try_convert)
            .transpose()?
            .unwrap_or_else(|| "127.0.0.1".into());
        let port: u16 = node
            .get(ruby.to_symbol("port"))
            .map(u16::try_convert)
            .transpose()?
            .unwrap_or(6379);
        seeds.push(gitlab_multistore::Address::Tcp { host, port });
    }
    if seeds.is_empty() {
        return Err(Error::new(
            ruby.exception_arg_error(),
            "a Redis Cluster store needs at least one node",
        ));
    }
    Ok(ClusterConfig { seeds })
}

/// redis-rb treats a timeout of 0 as "wait forever".
fn timeout(
    value: Option<magnus::Value>,
    default: Option<Duration>,
) -> Result<Option<Duration>, Error> {
    let Some(value) = value else {
        return Ok(default);
    };
    Ok(Wait::from_seconds(f64::try_convert(value)?).as_timeout())
}
