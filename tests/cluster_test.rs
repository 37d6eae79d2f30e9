mod support;

use gitlab_multistore::backend::cluster::key_slot;
use gitlab_multistore::transport::config::ClusterConfig;
use gitlab_multistore::{Address, CancelToken, Command, Reply, Store, StoreConfig};
use redis::Value;
use std::thread::sleep;
use std::time::{Duration, Instant};
use support::{bulk, call, status, RedisServer};

/// Three masters splitting the slots in thirds, joined with CLUSTER MEET (what `redis-cli
/// --cluster create` does, without needing it here).
struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Cluster {
        // The cluster bus gets its own free port: the default (port + 10000) may not exist.
        let buses: Vec<String> = (0..3).map(|_| support::free_port().to_string()).collect();
        let nodes: Vec<RedisServer> = buses
            .iter()
            .map(|bus| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    bus,
                ])
            })
            .collect();
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (epoch, (node, (first, last))) in nodes.iter().zip(ranges).enumerate() {
            node.query(&["cluster", "set-config-epoch", &(epoch + 1).to_string()]);
            node.query(&[
                "cluster",
                "addslotsrange",
                &first.to_string(),
                &last.to_string(),
            ]);
        }
        for (node, bus) in nodes.iter().zip(&buses).skip(1) {
            nodes[0].query(&["cluster", "meet", "127.0.0.1", &node.port.to_string(), bus]);
        }
        let cluster = Cluster { nodes };
        cluster.wait_until(|c| {
            c.nodes.iter().all(|n| {
                let info = n.query(&["cluster", "info"]);
                matches!(info, Value::BulkString(ref b) if String::from_utf8_lossy(b).contains("cluster_state:ok"))
            })
        });
        cluster
    }

    fn config(&self) -> StoreConfig {
        let mut config = StoreConfig::tcp("127.0.0.1", self.nodes[0].port);
        config.cluster = Some(ClusterConfig {
            seeds: self
                .nodes
                .iter()
                .map(|n| Address::Tcp {
                    host: "127.0.0.1".into(),
                    port: n.port,
                })
                .collect(),
        });
        config
    }

    fn owner(&self, key: &str) -> &RedisServer {
        let slot = key_slot(key.as_bytes()) as usize;
        &self.nodes[[5460, 10922, 16383]
            .iter()
            .position(|last| slot <= *last)
            .unwrap_or(2)]
    }

    fn node_id(node: &RedisServer) -> String {
        match node.query(&["cluster", "myid"]) {
            Value::BulkString(id) => String::from_utf8_lossy(&id).into_owned(),
            other => panic!("CLUSTER MYID replied {other:?}"),
        }
    }

    fn wait_until(&self, done: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < deadline, "the cluster did not settle");
            sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn routes_splits_scans_and_follows_a_moved_slot() {
    let cluster = Cluster::start();
    let store = Store::new(cluster.config());

    for key in ["foo", "bar", "baz", "qux"] {
        assert_eq!(call(&store, &["set", key, key]).unwrap(), status("OK"));
        assert_eq!(
            cluster.owner(key).query(&["get", key]),
            Value::BulkString(key.into())
        );
    }
    assert_eq!(
        call(&store, &["mget", "foo", "missing", "bar"]).unwrap(),
        Reply::Array(vec![bulk("foo"), Reply::Nil, bulk("bar")])
    );
    assert_eq!(call(&store, &["dbsize"]).unwrap(), Reply::Integer(4));

    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    loop {
        let Reply::Array(parts) = call(&store, &["scan", &cursor, "count", "1"]).unwrap() else {
            panic!("SCAN replied with something else than an array");
        };
        let Some(Reply::Array(keys)) = parts.get(1) else {
            panic!("no keys in SCAN reply")
        };
        seen.extend(
            keys.iter()
                .filter_map(|k| k.as_bytes())
                .map(|k| String::from_utf8_lossy(k).into_owned()),
        );
        cursor = String::from_utf8_lossy(parts[0].as_bytes().unwrap_or(b"0")).into_owned();
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ["bar", "baz", "foo", "qux"]);

    // Move foo's slot (and foo) to another node behind the store's back.
    let slot = key_slot(b"foo").to_string();
    let source = cluster.owner("foo");
    let target = cluster
        .nodes
        .iter()
        .find(|n| n.port != source.port)
        .unwrap_or(source);
    let (source_id, target_id) = (Cluster::node_id(source), Cluster::node_id(target));
    target.query(&["cluster", "setslot", &slot, "importing", &source_id]);
    source.query(&["cluster", "setslot", &slot, "migrating", &target_id]);
    source.query(&[
        "migrate",
        "127.0.0.1",
        &target.port.to_string(),
        "foo",
        "0",
        "5000",
    ]);
    // Mid-migration the source answers ASK, which the store follows.
    assert_eq!(call(&store, &["get", "foo"]).unwrap(), bulk("foo"));
    for node in &cluster.nodes {
        node.query(&["cluster", "setslot", &slot, "node", &target_id]);
    }
    assert_eq!(
        call(&store, &["set", "foo", "moved"]).unwrap(),
        status("OK")
    );
    assert_eq!(
        target.query(&["get", "foo"]),
        Value::BulkString(b"moved".to_vec())
    );
    let pipelined = store
        .pipeline(
            &[
                Command::from_args(["get", "foo"]),
                Command::from_args(["get", "bar"]),
            ],
            &CancelToken::new(),
        )
        .unwrap();
    assert_eq!(pipelined, vec![bulk("moved"), bulk("bar")]);
}

#[test]
fn backfills_and_verifies_every_master_side_by_side_and_resumes_each_from_its_own_cursor() {
    use gitlab_multistore::migration::backfill::Backfill;
    use gitlab_multistore::migration::verify::{Verify, VerifyOptions};
    use std::sync::Arc;

    let cluster = Cluster::start();
    let old = Arc::new(Store::new(cluster.config()));
    let new_server = support::RedisServer::start();
    let new = Arc::new(Store::new(new_server.config()));
    let cancel = CancelToken::new();
    let writes: Vec<Command> = (0..900)
        .map(|i| Command::from_args(["set".to_string(), format!("key:{i}"), i.to_string()]))
        .collect();
    old.pipeline(&writes, &cancel).unwrap();

    let mut first = Backfill::new(Arc::clone(&new), Arc::clone(&old), None, 50);
    let after_one_step = first.step(&cancel).unwrap().scanned;
    let saved = first.checkpoint();
    // Another process continues from the checkpoint: each master from its own cursor.
    let mut resumed = Backfill::new(Arc::clone(&new), Arc::clone(&old), None, 50)
        .resume(saved.clone())
        .with_settle_delay(Duration::from_millis(10));
    while !resumed.step(&cancel).unwrap().done {}

    // SCAN COUNT 50 on each of the three masters at once.
    assert!(after_one_step > 100, "one step scanned {after_one_step}");
    assert!(saved.cursor.starts_with(b"lanes:"));
    assert_eq!(
        (resumed.report().scanned, resumed.report().copied),
        (900, 900)
    );
    assert_eq!(call(&new, &["dbsize"]).unwrap(), Reply::Integer(900));

    let mut verify = Verify::new(Arc::clone(&old), Arc::clone(&new), VerifyOptions::default());
    while !verify.step(&cancel).unwrap().done {}
    assert!(verify.report().in_agreement());
    assert_eq!(verify.report().checked, 900);
}
