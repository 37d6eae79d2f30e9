//! Stores behind Redis Sentinel: the address of the master (or a replica) is asked of the
//! sentinels, as redis-rb's `Connector::Sentinel` does, and asked again after a connection
//! error, so a failover is followed by the next reconnect. A connection whose server turns out
//! to have another role (an old master demoted by a failover) is refused, as in redis-rb.

use crate::error::{Cause, Error, Result};
use crate::protocol::command::Command;
use crate::protocol::reply::Reply;
use crate::transport::cancel::CancelToken;
use crate::transport::config::{Address, SentinelConfig, SentinelRole, StoreConfig};
use crate::transport::connection::Connection;

/// The address to connect to now, asked of each sentinel in turn.
pub fn resolve(
    config: &StoreConfig,
    sentinel: &SentinelConfig,
    cancel: &CancelToken,
) -> Result<Address> {
    for node in &sentinel.sentinels {
        let mut node_config = StoreConfig::tcp(node.host.clone(), node.port);
        node_config.username = node.username.clone();
        node_config.password = node.password.clone();
        node_config.connect_timeout = config.connect_timeout;
        node_config.read_timeout = config.read_timeout;
        node_config.write_timeout = config.write_timeout;
        let Ok(mut conn) = Connection::open(&node_config, cancel, 0) else {
            continue;
        };
        let address = match sentinel.role {
            SentinelRole::Master => master_address(&mut conn, &sentinel.master_name, cancel),
            SentinelRole::Replica => replica_address(&mut conn, &sentinel.master_name, cancel),
        };
        match address {
            Ok(Some(address)) => return Ok(address),
            Ok(None) => continue,
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(_) => continue,
        }
    }
    Err(Error::CannotConnect {
        location: format!("sentinels of {}", sentinel.master_name),
        cause: Cause::Refused("No sentinels available.".into()),
    })
}

fn master_address(
    conn: &mut Connection,
    name: &str,
    cancel: &CancelToken,
) -> Result<Option<Address>> {
    let cmd = Command::from_args(["SENTINEL", "get-master-addr-by-name", name]);
    Ok(match conn.request(&cmd, cancel)? {
        Reply::Array(parts) => host_port(parts.first(), parts.get(1)),
        _ => None,
    })
}

fn replica_address(
    conn: &mut Connection,
    name: &str,
    cancel: &CancelToken,
) -> Result<Option<Address>> {
    let cmd = Command::from_args(["SENTINEL", "replicas", name]);
    let Reply::Array(replicas) = conn.request(&cmd, cancel)? else {
        return Ok(None);
    };
    Ok(replicas.iter().find_map(|replica| {
        let Reply::Array(fields) = replica else {
            return None;
        };
        let field = |name: &[u8]| {
            fields
                .chunks(2)
                .find(|pair| pair[0].as_bytes() == Some(name))
                .and_then(|pair| pair.get(1))
        };
        let down = field(b"flags")
            .and_then(Reply::as_bytes)
            .is_some_and(|flags| {
                flags
                    .split(|b| *b == b',')
                    .any(|f| f == b"s_down" || f == b"o_down")
            });
        if down {
            return None;
        }
        host_port(field(b"ip"), field(b"port"))
    }))
}

fn host_port(host: Option<&Reply>, port: Option<&Reply>) -> Option<Address> {
    let host = String::from_utf8(host?.as_bytes()?.to_vec()).ok()?;
    let port = std::str::from_utf8(port?.as_bytes()?).ok()?.parse().ok()?;
    Some(Address::Tcp { host, port })
}

/// Checks that a new connection reached a server of the expected role.
pub fn check_role(
    conn: &mut Connection,
    sentinel: &SentinelConfig,
    cancel: &CancelToken,
) -> Result<()> {
    let role = match conn.request(&Command::from_args(["ROLE"]), cancel)? {
        Reply::Array(parts) => parts.first().and_then(Reply::as_bytes).map(<[u8]>::to_vec),
        _ => None,
    };
    let expected: &[u8] = match sentinel.role {
        SentinelRole::Master => b"master",
        SentinelRole::Replica => b"slave",
    };
    match role {
        Some(role) if role != expected => Err(Error::ConnectionLost {
            cause: Cause::Refused(format!(
                "Instance role mismatch. Expected {}, got {}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(&role)
            )),
        }),
        _ => Ok(()),
    }
}
