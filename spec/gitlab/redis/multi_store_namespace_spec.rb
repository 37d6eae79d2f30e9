# frozen_string_literal: true

require "connection_pool"
require "redis/namespace"

# A Redis::Namespace as either store, or both: the MultiStore keeps each store's keys inside its
# namespace, as redis-namespace would, and moves a partition from one namespace to another.
RSpec.describe Gitlab::Redis::MultiStore, "with namespaced stores" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:dual_write) { :use_primary_and_secondary_stores_for_namespaced }
  let(:primary_default) { :use_primary_store_as_default_for_namespaced }
  let(:raw) { primary_server.client }
  let(:reports) { [] }

  def namespaced(name, server = primary_server)
    Redis::Namespace.new(name, redis: Redis.new(url: server.url))
  end

  # The partition moves from namespace "old" to namespace "new" of the same server.
  def store(primary = namespaced("new"), secondary = namespaced("old"))
    described_class.new(primary, secondary, "namespaced", feature_flags: flags, on_error: ->(e, c) { reports << [e, c] })
  end

  it "keeps each store's keys inside its namespace, and hands back the caller's key names" do
    old = namespaced("old")
    old.set("a", "1")
    old.hset("h", "f", "v")
    raw.set("outside", "x")
    multi_store = store

    aggregate_failures do
      expect(multi_store.get("a")).to eq("1")
      expect(multi_store.keys("*").sort).to eq(%w[a h])
      expect(multi_store.scan_each.to_a.sort).to eq(%w[a h])
      expect(multi_store.scan(0, match: "a*").last).to eq(["a"])
      expect(multi_store.exists?("outside")).to be(false)
      expect(multi_store.same_store?).to be(false)
    end
  end

  it "writes to both namespaces during dual-write, with the key names redis-namespace would use" do
    flags.enable(dual_write)
    multi_store = store

    multi_store.set("k", "v")
    multi_store.incr("counter")
    multi_store.pipelined { |p| p.rpush("q", "x"); p.zadd("z", 1, "m") }

    aggregate_failures do
      expect(raw.keys("*").sort).to eq(%w[new:counter new:k new:q new:z old:counter old:k old:q old:z])
      expect(namespaced("new").get("k")).to eq("v")
      expect(namespaced("old").lrange("q", 0, -1)).to eq(["x"])
    end
  end

  it "un-prefixes the key names of replies: blocking pops, LMPOP, XREAD" do
    flags.enable(dual_write)
    multi_store = store
    multi_store.rpush("q", %w[a b c])
    multi_store.xadd("s", { "f" => "v" }, id: "1-1")

    aggregate_failures do
      expect(multi_store.blpop("q", timeout: 1)).to eq(%w[q a])
      expect(multi_store.call("LMPOP", 1, "q", "LEFT")).to eq(["q", ["b"]])
      expect(multi_store.xread("s", "0")).to eq("s" => [["1-1", { "f" => "v" }]])
      expect([namespaced("new").lrange("q", 0, -1), namespaced("old").lrange("q", 0, -1)]).to eq([["c"], ["c"]])
    end
  end

  it "backfills and verifies one namespace into the other, leaving every other key alone" do
    old = namespaced("old")
    50.times { |i| old.set("key:#{i}", i.to_s) }
    old.hset("h", "f", "v")
    raw.set("outside", "x")
    namespaced("elsewhere").set("key:1", "not ours")
    flags.enable(dual_write)
    multi_store = store

    report = multi_store.backfill
    verify = multi_store.verify

    aggregate_failures do
      expect([report.scanned, report.copied, report.ok?]).to eq([51, 51, true])
      expect(verify).to be_in_agreement
      expect(verify.checked).to eq(51)
      expect(namespaced("new").keys("*").size).to eq(51)
      expect(namespaced("new").hgetall("h")).to eq("f" => "v")
      expect([raw.get("outside"), namespaced("elsewhere").get("key:1")]).to eq(["x", "not ours"])
      expect(raw.exists?("new:outside")).to be(false)
    end
  end

  it "refuses commands that act on the whole database, before sending them anywhere" do
    flags.enable(dual_write)
    multi_store = store
    multi_store.set("k", "v")
    raw.set("outside", "x")

    aggregate_failures do
      %i[flushdb dbsize randomkey].each do |command|
        expect { multi_store.public_send(command) }
          .to raise_error(described_class::NamespaceError, /#{command} cannot run inside a key namespace/)
      end
      expect { multi_store.pipelined { |p| p.set("a", "1"); p.flushdb } }.to raise_error(described_class::NamespaceError)
      expect(raw.keys("*").sort).to eq(%w[new:k old:k outside])
      expect(reports).to eq([])
      expect(multi_store.migration_status[:full_verify_needed]).to be(false)
    end
  end

  it "prefixes pub/sub channels as redis-namespace does, and hands back the channel names" do
    multi_store = store
    heard = Queue.new
    subscriber = Redis.new(url: primary_server.url)
    listener = Thread.new do
      subscriber.subscribe("old:news") do |on|
        on.subscribe { heard << :ready }
        on.message { |channel, message| heard << [channel, message]; subscriber.unsubscribe }
      end
    end
    heard.pop

    multi_store.publish("news", "hello")

    expect(heard.pop).to eq(["old:news", "hello"])
    listener.join
  end

  it "accepts nested namespaces, and refuses a Proc namespace, glob characters and overlapping namespaces" do
    nested = Redis::Namespace.new("inner", redis: namespaced("outer"))
    store(nested, namespaced("old")).set("k", "v")

    expect(raw.get("outer:inner:k")).to be_nil # flags off: the old store only
    flags.enable(primary_default)
    store(nested, namespaced("old")).set("k", "v")
    expect(raw.get("outer:inner:k")).to eq("v")

    dynamic = Redis::Namespace.new(-> { "tenant" }, redis: Redis.new(url: primary_server.url))
    expect { store(dynamic) }.to raise_error(ArgumentError, /namespace is a Proc/)
    expect { store(namespaced("a*")) }.to raise_error(ArgumentError, /glob characters/)
    expect { store(namespaced("cache:v2"), namespaced("cache")) }.to raise_error(ArgumentError, /overlap/)
  end

  it "takes one namespace of one server on both sides (however the server is named) for one store: each write once" do
    flags.enable(dual_write)
    aliased = Redis::Namespace.new("gitlab", redis: Redis.new(host: "localhost", port: primary_server.port))
    [store(namespaced("gitlab"), namespaced("gitlab")), store(namespaced("gitlab"), aliased)].each do |one|
      one.incr("counter")
      expect(one.backfill).to be_ok
      expect(one.verify).to be_in_agreement
    end

    expect(raw.get("gitlab:counter")).to eq("2")
    expect(raw.keys("*")).to eq(["gitlab:counter"])
  end

  it "subscribes through the MultiStore inside the namespace, and hears the caller's channel names" do
    multi_store = store
    heard = Queue.new
    listener = Thread.new do
      multi_store.subscribe("news") do |on|
        on.subscribe { |channel, _count| heard << [:subscribed, channel] }
        on.message { |channel, message| heard << [channel, message]; multi_store.unsubscribe }
      end
    end
    expect(heard.pop).to eq([:subscribed, "news"])

    raw.publish("old:news", "hello")

    expect(heard.pop).to eq(%w[news hello])
    listener.join
  end

  # Found by an adversarial run (each failed before its fix).
  describe "the edges of a namespace" do
    before { flags.enable(dual_write) }

    it "reads options one by one: a key named store, a repeated STORE, a group named streams, two MATCHes" do
      multi_store = store
      multi_store.rpush("store", %w[b a])
      multi_store.rpush("l", %w[2 1])
      raw.set("outside", "x")

      aggregate_failures do
        expect(multi_store.sort("store", order: "alpha")).to eq(%w[a b])
        expect(multi_store.call("SORT", "l", "STORE", "ignored", "STORE", "sorted")).to eq(2)
        expect(multi_store.call("SCAN", "0", "MATCH", "nothing", "MATCH", "*", "COUNT", "100").last.sort).to eq(%w[l sorted store])
        multi_store.xgroup(:create, "s", "streams", "$", mkstream: true)
        expect(multi_store.xreadgroup("streams", "c", "s", ">")).to eq({})
        expect(raw.keys("*").sort).to eq(%w[new:l new:s new:sorted new:store old:l old:s old:sorted old:store outside])
      end
    end

    it "hands back key names inside EXEC's replies as it does outside a transaction" do
      multi_store = store
      multi_store.rpush("q", %w[x y])

      replies = multi_store.multi do |tx|
        tx.keys("q*")
        tx.scan(0, match: "q*")
        tx.blpop("q", timeout: 1)
      end

      expect(replies).to eq([["q"], ["0", ["q"]], %w[q x]])
    end

    it "confines PUBSUB CHANNELS and NUMSUB, refuses DEBUG, and loads scripts" do
      multi_store = store
      subscriber = Redis.new(url: primary_server.url)
      ready = Queue.new
      listener = Thread.new do
        subscriber.subscribe("old:events", "tenant2:private") { |on| on.subscribe { |_, count| ready << count if count == 2 } }
      end
      ready.pop

      aggregate_failures do
        expect(multi_store.pubsub(:channels)).to eq(["events"])
        expect(multi_store.pubsub(:numsub, "events")).to eq(["events", 1])
        expect { multi_store.call("DEBUG", "OBJECT", "k") }.to raise_error(described_class::NamespaceError)
        sha = multi_store.script(:load, "return 1")
        expect(multi_store.evalsha(sha)).to eq(1)
      end
    ensure
      listener&.kill&.join(1) # the subscription holds the client: it ends with its thread
      subscriber&.close
    end

    it "refuses a store without a namespace next to a namespaced one of the same server" do
      plain = Redis.new(url: primary_server.url)

      expect { store(namespaced("v2"), plain) }.to raise_error(ArgumentError, /no namespace and the namespace "v2" of one server overlap/)
      expect { store(plain, namespaced("old")) }.to raise_error(ArgumentError, /overlap/)
    end

    it "refuses to backfill or verify overlapping namespaces of one server named two ways, or after a SELECT" do
      aliased = Redis::Namespace.new("cache:v2", redis: Redis.new(url: "redis://localhost:#{primary_server.port}"))
      multi_store = store(aliased, namespaced("cache"))
      namespaced("cache").set("k", "v")

      expect { multi_store.backfill }.to raise_error(ArgumentError, /one server and database/)
      expect { multi_store.verify(repair: true) }.to raise_error(ArgumentError, /one server and database/)
      expect(raw.keys("*")).to eq(["cache:k"])

      selected = store(Redis::Namespace.new("cache:v2", redis: Redis.new(url: primary_server.url(1))), namespaced("cache"))
      selected.select(1)
      expect { selected.backfill }.to raise_error(ArgumentError, /one server and database/)
    end

    it "says why verify(sample:) cannot keep to a namespace" do
      expect { store.verify(sample: 10) }.to raise_error(ArgumentError, /RANDOMKEY, which cannot keep to a namespace/)
    end
  end

  describe "a MultiStoreWrapper over namespaced pools" do
    let(:pools) do
      [ConnectionPool.new(size: 4) { namespaced("new") }, ConnectionPool.new(size: 4) { namespaced("old") }]
    end

    it "walks the runbook from one namespace into the other under 4 threads, losing nothing" do
      multi_stores = Gitlab::Redis::MultiStoreConnectionPool.new(size: 4) do
        described_class.create_using_pool(*pools, "namespaced", feature_flags: flags)
      end
      stop = false
      writers = Array.new(4) do |t|
        Thread.new do
          written = 0
          until stop
            multi_stores.with { |redis| redis.incr("count:#{t}"); redis.sadd("seen:#{t}", written.to_s) }
            written += 1
          end
          written
        end
      end
      sleep 0.2
      flags.set(dual_write)
      sleep 0.2
      backfilled = multi_stores.with(&:backfill)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      sleep 0.05 until multi_stores.with { |r| r.migration_status[:journal_keys] }.zero? ||
                       Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      flags.set(dual_write, primary_default)
      sleep 0.2
      flags.set(primary_default)
      sleep 0.2
      stop = true
      counts = writers.map(&:value)
      new_ns = namespaced("new")

      aggregate_failures do
        expect(backfilled).to be_ok
        counts.each_with_index do |count, t|
          expect([t, new_ns.get("count:#{t}").to_i, new_ns.scard("seen:#{t}")]).to eq([t, count, count])
        end
        expect(raw.keys("*").map { |k| k.split(":").first }.uniq.sort).to eq(%w[new old])
      end
    ensure
      pools.each { |pool| pool.shutdown { |client| client.redis.close } }
    end
  end
end
