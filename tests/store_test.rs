mod support;

use gitlab_multistore::error::Cause;
use gitlab_multistore::{CancelToken, Command, Error, ReadTimeout, Reply, Store, StoreConfig};
use redis::Value;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::{bulk, call, status, RedisServer};

#[test]
fn round_trips_commands_and_keeps_error_replies_as_values() {
    let server = RedisServer::start();
    let store = Store::new(server.config());
    assert_eq!(call(&store, &["SET", "k", "v"]).unwrap(), status("OK"));
    assert_eq!(call(&store, &["GET", "k"]).unwrap(), bulk("v"));
    assert_eq!(call(&store, &["GET", "missing"]).unwrap(), Reply::Nil);
    match call(&store, &["LPUSH", "k", "x"]).unwrap() {
        Reply::Error(line) => assert_eq!(
            line,
            b"WRONGTYPE Operation against a key holding the wrong kind of value"
        ),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn pipelines_in_one_round_trip_with_errors_in_place() {
    let server = RedisServer::start();
    let store = Store::new(server.config());
    let replies = store
        .pipeline(
            &[
                Command::from_args(["SET", "a", "1"]),
                Command::from_args(["LPUSH", "a", "x"]),
                Command::from_args(["INCR", "a"]),
            ],
            &CancelToken::new(),
        )
        .unwrap();
    assert_eq!(replies[0], status("OK"));
    assert!(replies[1].is_error());
    assert_eq!(replies[2], Reply::Integer(2));
}

#[test]
fn selects_the_configured_db_authenticates_and_names_the_connection() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let mut config = server.config();
    config.db = 3;
    config.password = Some("s3cret".into());
    config.client_name = Some("multistore-test".into());
    let store = Store::new(config);
    call(&store, &["SET", "in-db-3", "yes"]).unwrap();
    assert_eq!(
        call(&store, &["CLIENT", "GETNAME"]).unwrap(),
        bulk("multistore-test")
    );

    let mut plain = server.config();
    plain.password = Some("s3cret".into());
    let db0 = Store::new(plain);
    assert_eq!(call(&db0, &["GET", "in-db-3"]).unwrap(), Reply::Nil);
    // A SELECT sent as a command moves the one connection it ran on, which is then closed: the
    // pool stays on its database. `select` moves the pool.
    call(&db0, &["SELECT", "3"]).unwrap();
    assert_eq!(call(&db0, &["GET", "in-db-3"]).unwrap(), Reply::Nil);
    db0.select(3);
    assert_eq!(call(&db0, &["GET", "in-db-3"]).unwrap(), bulk("yes"));
}

#[test]
fn a_wrong_password_is_a_command_error() {
    let server = RedisServer::start_with(&["--requirepass", "right"]);
    let mut config = server.config();
    config.password = Some("wrong".into());
    let store = Store::new(config);
    match call(&store, &["PING"]) {
        Err(Error::Server(reply)) => assert!(reply.message.starts_with(b"WRONGPASS"), "{reply:?}"),
        other => panic!("expected WRONGPASS, got {other:?}"),
    }
}

#[test]
fn talks_over_a_unix_socket() {
    let server = RedisServer::start();
    let store = Store::new(StoreConfig::unix(server.socket.to_str().unwrap()));
    assert_eq!(call(&store, &["PING"]).unwrap(), status("PONG"));
}

#[test]
fn cannot_connect_names_location_and_the_errno() {
    let port = support::free_port();
    let store = Store::new(StoreConfig::tcp("127.0.0.1", port));
    let err = call(&store, &["PING"]).unwrap_err();
    match &err {
        Error::CannotConnect { location, cause } => {
            assert_eq!(location, &format!("127.0.0.1:{port}"));
            assert_eq!(cause, &Cause::Os(libc::ECONNREFUSED));
        }
        other => panic!("not a connect failure: {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("Error connecting to Redis on 127.0.0.1:{port} (ECONNREFUSED)")
    );
    assert!(!store.is_connected());
}

#[test]
fn reconnects_once_after_the_server_dropped_the_connection() {
    let server = RedisServer::start();
    let store = Store::new(server.config());
    call(&store, &["CLIENT", "SETNAME", "victim"]).unwrap();
    server.query(&["CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal"]);
    assert_eq!(call(&store, &["PING"]).unwrap(), status("PONG"));
}

#[test]
fn read_timeout_is_honoured_and_reported_like_redis_rb() {
    let server = RedisServer::start();
    let mut config = server.config();
    config.read_timeout = Some(Duration::from_millis(200));
    config.reconnect_attempts = 0;
    let store = Store::new(config);
    let started = Instant::now();
    let err = store
        .call(
            &Command::from_args(["DEBUG", "SLEEP", "1"]),
            ReadTimeout::Configured,
            &CancelToken::new(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "Connection timed out");
    assert!(started.elapsed() < Duration::from_millis(900));
}

#[test]
fn blocking_command_waits_past_the_read_timeout_with_its_own() {
    let server = RedisServer::start();
    let mut config = server.config();
    config.read_timeout = Some(Duration::from_millis(100));
    let store = Store::new(config.clone());
    let timeout = gitlab_multistore::backend::store::blocking_read_timeout(
        &config,
        Duration::from_millis(300),
    );
    let reply = store
        .call(
            &Command::from_args(["BLPOP", "empty", "0.3"]),
            timeout,
            &CancelToken::new(),
        )
        .unwrap();
    assert_eq!(reply, Reply::Nil);
}

#[test]
fn cancel_wakes_a_blocked_call_from_another_thread() {
    let server = RedisServer::start();
    let store = Arc::new(Store::new(server.config()));
    let cancel = Arc::new(CancelToken::new());
    let waiter = {
        let (store, cancel) = (Arc::clone(&store), Arc::clone(&cancel));
        thread::spawn(move || {
            store.call(
                &Command::from_args(["BLPOP", "never", "0"]),
                ReadTimeout::Override(None),
                &cancel,
            )
        })
    };
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    cancel.cancel();
    let result = waiter.join().unwrap();
    assert!(matches!(result, Err(Error::Interrupted)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The pool is still usable afterwards.
    assert_eq!(call(&store, &["PING"]).unwrap(), status("PONG"));
}

#[test]
fn threads_share_one_store_without_mixing_replies() {
    let server = RedisServer::start();
    let store = Arc::new(Store::new(server.config()));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..300 {
                    let key = format!("k{t}-{i}");
                    call(&store, &["SET", &key, &key]).unwrap();
                    assert_eq!(call(&store, &["GET", &key]).unwrap(), bulk(&key));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(server.query(&["DBSIZE"]), Value::Int(2400));
}

#[test]
fn select_moves_the_whole_pool_to_another_db() {
    let server = RedisServer::start();
    let store = Store::new(server.config());
    call(&store, &["SET", "k", "db0"]).unwrap();
    store.select(5);
    assert_eq!(call(&store, &["GET", "k"]).unwrap(), Reply::Nil);
    assert_eq!(store.id(), format!("redis://127.0.0.1:{}/5", server.port));
}
