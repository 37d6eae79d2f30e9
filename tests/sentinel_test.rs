//! Stores behind Redis Sentinel, against a real master, replica and sentinel: the address is
//! asked of the sentinel, the role named in the configuration is the one connected to, and no
//! sentinel to ask is a connection error that names them.

mod support;

use gitlab_multistore::transport::config::{SentinelConfig, SentinelNode, SentinelRole};
use gitlab_multistore::{Error, Store, StoreConfig};
use redis::Value;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};
use support::{call, free_port, status, RedisServer};

const MASTER_NAME: &str = "mymaster";

struct Sentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn watching(master: &RedisServer) -> Sentinel {
        let dir = tempfile::tempdir().expect("temp dir for the sentinel");
        let port = free_port();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {} 1\n",
                dir.path().display(),
                master.port
            ),
        )
        .expect("sentinel.conf written");
        let child = Process::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }

    fn node(&self) -> SentinelNode {
        SentinelNode {
            host: "127.0.0.1".into(),
            port: self.port,
            username: None,
            password: None,
        }
    }

    /// Waits until the sentinel knows the master and `replicas` replicas of it.
    fn wait_until_it_sees(&self, replicas: usize) {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).expect("sentinel URL");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let seen = client.get_connection().ok().and_then(|mut conn| {
                redis::cmd("SENTINEL")
                    .arg("replicas")
                    .arg(MASTER_NAME)
                    .query::<Vec<Value>>(&mut conn)
                    .ok()
            });
            if seen.is_some_and(|seen| seen.len() >= replicas) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the sentinel did not see {replicas} replica(s) of {MASTER_NAME}");
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn through(sentinels: Vec<SentinelNode>, role: SentinelRole) -> StoreConfig {
    let mut config = StoreConfig::tcp(MASTER_NAME, 0);
    config.sentinel = Some(SentinelConfig {
        sentinels,
        master_name: MASTER_NAME.into(),
        role,
    });
    config
}

#[test]
fn writes_reach_the_master_the_sentinel_names_and_replica_reads_a_replica() {
    let master = RedisServer::start();
    let port = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let sentinel = Sentinel::watching(&master);
    sentinel.wait_until_it_sees(1);

    let store = Store::new(through(vec![sentinel.node()], SentinelRole::Master));
    assert_eq!(call(&store, &["SET", "k", "v"]).unwrap(), status("OK"));
    assert_eq!(
        master.query(&["GET", "k"]),
        Value::BulkString(b"v".to_vec())
    );
    assert_eq!(store.id(), format!("redis://127.0.0.1:{}/0", master.port));

    let on_replica = Store::new(through(vec![sentinel.node()], SentinelRole::Replica));
    let role = call(&on_replica, &["ROLE"]).unwrap();
    let first = match role {
        gitlab_multistore::Reply::Array(parts) => parts.into_iter().next(),
        _ => None,
    };
    assert_eq!(
        first,
        Some(gitlab_multistore::Reply::Bulk(b"slave".to_vec()))
    );
    drop(replica);
}

#[test]
fn asks_the_next_sentinel_when_one_is_down_and_names_the_sentinels_when_none_answers() {
    let master = RedisServer::start();
    let sentinel = Sentinel::watching(&master);
    sentinel.wait_until_it_sees(0);
    let down = SentinelNode {
        host: "127.0.0.1".into(),
        port: free_port(),
        username: None,
        password: None,
    };

    let store = Store::new(through(
        vec![down.clone(), sentinel.node()],
        SentinelRole::Master,
    ));
    assert_eq!(call(&store, &["PING"]).unwrap(), status("PONG"));

    let nowhere = Store::new(through(vec![down], SentinelRole::Master));
    match call(&nowhere, &["PING"]) {
        Err(Error::CannotConnect { location, .. }) => {
            assert_eq!(location, format!("sentinels of {MASTER_NAME}"))
        }
        other => panic!("expected CannotConnect, got {other:?}"),
    }
}
