# frozen_string_literal: true

require "connection_pool"
require "fileutils"
require "tmpdir"

module Gitlab
  module Redis
    # Written exactly as GitLab's guide for adding a Redis instance shows it (its fallback,
    # SharedState, is defined per example).
    class MigratingFoo < MultiStoreWrapper
      def self.config_fallback = SharedState
      def self.multistore = MultiStore.create_using_pool(pool, config_fallback.pool, store_name)
    end

    # The same, for an instance whose own configuration is a Redis Cluster.
    class MigratingClusterFoo < MultiStoreWrapper
      def self.config_fallback = SharedState
      def self.multistore = MultiStore.create_using_pool(pool, config_fallback.pool, store_name)
    end
  end
end

# GitLab's current MultiStore API: stores given as ConnectionPools, a pool of MultiStores whose
# `with` borrows one connection of each store for the block, and the MultiStoreWrapper base class
# an instance being migrated is written with.
RSpec.describe Gitlab::Redis::MultiStore, "from connection pools" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:dual_write) { :use_primary_and_secondary_stores_for_pooled }
  let(:primary_default) { :use_primary_store_as_default_for_pooled }
  let(:pools) { [] }

  after { pools.each { |pool| pool.shutdown(&:close) } }

  def pool_of(url, size: 3)
    ConnectionPool.new(size: size) { Redis.new(url: url) }.tap { |pool| pools << pool }
  end

  def pooled_store(**options)
    described_class.create_using_pool(pool_of(primary_server.url), pool_of(secondary_server.url), "pooled",
                                      feature_flags: flags, **options)
  end

  describe ".create_using_pool" do
    it "dual-writes to the pools' servers and keeps none of the pools' clients" do
      primary_pool = pool_of(primary_server.url)
      secondary_pool = pool_of(secondary_server.url)
      store = described_class.create_using_pool(primary_pool, secondary_pool, "pooled", feature_flags: flags)
      flags.enable(dual_write)

      store.set("k", "v")
      store.incr("counter")

      aggregate_failures do
        expect([primary_server.client.get("k"), secondary_server.client.get("k")]).to eq(%w[v v])
        expect([primary_server.client.get("counter"), secondary_server.client.get("counter")]).to eq(%w[1 1])
        expect([primary_pool.available, secondary_pool.available]).to eq([3, 3])
        expect([store.primary_store, store.secondary_store]).to eq([primary_pool, secondary_pool])
        expect([store.primary_pool, store.secondary_pool]).to eq([primary_pool, secondary_pool])
      end
    end

    it "accepts pools of Redis Cluster clients" do
      cluster = LocalRedisCluster.new
      store = described_class.create_using_pool(ConnectionPool.new(size: 2) { Redis.new(cluster: cluster.urls) },
                                                pool_of(secondary_server.url), "pooled", feature_flags: flags)
      flags.enable(dual_write, primary_default)

      10.times { |i| store.set("cluster-key-#{i}", i.to_s) }

      expect((0...10).map { |i| cluster.server_for("cluster-key-#{i}").client.get("cluster-key-#{i}") })
        .to eq((0...10).map(&:to_s))
      expect(secondary_server.client.mget((0...10).map { |i| "cluster-key-#{i}" })).to eq((0...10).map(&:to_s))
    ensure
      cluster&.cleanup
    end

    it "refuses what is not a pool, or a pool of something other than Redis clients, saying which" do
      expect { described_class.create_using_pool(primary_server.url, pool_of(secondary_server.url), "p") }
        .to raise_error(ArgumentError, "primary_pool must be a ConnectionPool (something with #with), got String")
      expect { described_class.create_using_pool(pool_of(primary_server.url), ConnectionPool.new(size: 1) { Object.new }, "p") }
        .to raise_error(ArgumentError, /invalid secondary_pool: its connections are Object/)
    end

    it "duplicates into a MultiStore of the same pools" do
      store = pooled_store
      copy = store.dup

      expect([copy.primary_pool, copy.secondary_pool]).to eq([store.primary_pool, store.secondary_pool])
      expect(copy.instance_name).to eq("pooled")
    end
  end

  describe "#with_borrowed_connection" do
    # CLIENT ID names the connection a command ran on; it goes to the default store.
    def connection_ids(store, count = 20)
      Array.new(count) { store.client(:id) }.uniq
    end

    it "runs every command of the block on one connection of each store, while other threads use the same MultiStore" do
      store = pooled_store
      flags.enable(dual_write)
      stop = false
      others = Array.new(3) { |t| Thread.new { store.set("other-#{t}", "x") until stop } }
      secondary_ids = primary_ids = secondary_again = nil

      store.with_borrowed_connection do
        secondary_ids = connection_ids(store)
        flags.enable(primary_default)
        primary_ids = connection_ids(store)
        flags.disable(primary_default)
        secondary_again = connection_ids(store)
      end
      stop = true
      others.each(&:join)

      aggregate_failures do
        expect(secondary_ids.size).to eq(1)
        expect(primary_ids.size).to eq(1)
        expect(secondary_again).to eq(secondary_ids)
      end
    end

    it "nests, and gives the connections back when the outermost block ends, also on an exception" do
      store = pooled_store(pool_size: 1)
      borrowed = nil
      expect do
        store.with_borrowed_connection do
          borrowed = store.client(:id)
          store.with_borrowed_connection { expect(store.client(:id)).to eq(borrowed) }
          expect(store.client(:id)).to eq(borrowed)
          raise ArgumentError, "the block failed"
        end
      end.to raise_error(ArgumentError, "the block failed")

      # The only idle connection kept (pool_size 1) is the one given back.
      expect(Thread.new { store.client(:id) }.value).to eq(borrowed)
    end

    it "keeps WATCH and MULTI working inside the block, and the stores equal" do
      store = pooled_store
      flags.enable(dual_write)
      store.set("balance", "10")

      result = store.with_borrowed_connection do
        store.watch("balance") do
          balance = store.get("balance").to_i
          store.multi { |tx| tx.set("balance", (balance - 3).to_s) }
        end
      end

      expect(result).to eq(["OK"])
      expect([primary_server.client.get("balance"), secondary_server.client.get("balance")]).to eq(%w[7 7])
    end

    it "yields the MultiStore" do
      store = pooled_store

      expect(store.with_borrowed_connection { |redis| redis }).to be(store)
    end

    it "does not pass a borrow a thread left open (in a fiber never resumed) to the threads that come after it" do
      store = pooled_store
      Thread.new do
        borrowing = Enumerator.new do |yielder|
          store.with_borrowed_connection do
            store.client(:setname, "tenant-a")
            yielder << :borrowed
          end
        end
        borrowing.next # the block's end never runs
      end.join

      names = Array.new(30) { Thread.new { store.client(:getname) }.value }

      expect(names.compact).to eq([])
    end
  end

  describe "MultiStores of one partition" do
    it "give one migration_status, whichever of them ran the verify" do
      flags.enable(dual_write)
      stores = Array.new(3) { pooled_store }
      stores.first.set("k", "v")

      expect(stores.last.verify(repair: true)).to be_in_agreement
      expect(stores.map { |store| store.migration_status.values_at(:safe_to_switch, :reasons) }).to all(eq([true, []]))
      expect(stores.first.migration_status[:last_verify]).to include(full: true, in_agreement: true, at: an_instance_of(Time))
    end
  end

  describe Gitlab::Redis::MultiStoreConnectionPool do
    it "borrows the connections of the MultiStore it lends around the block" do
      stores = described_class.new(size: 2) { Gitlab::Redis::MultiStore.new(primary_server.url, secondary_server.url, "pooled") }
      ids = stores.with { |redis| Array.new(10) { redis.client(:id) }.uniq }
      also = stores.then { |redis| redis }

      expect(ids.size).to eq(1)
      expect(also).to be_a(Gitlab::Redis::MultiStore)
    end

    it "lends anything else as it is" do
      plain = described_class.new(size: 1) { Redis.new(url: primary_server.url) }

      expect(plain.with { |redis| redis.ping }).to eq("PONG")
    end
  end
end

RSpec.describe Gitlab::Redis::MultiStoreWrapper do
  around do |example|
    saved_env = ENV.to_h
    ENV.keys.grep(/\AGITLAB_REDIS_|\AGITLAB_MULTISTORE_|\A(RAILS|RACK)_ENV\z|\ARAILS_MAX_THREADS\z/).each { |name| ENV.delete(name) }
    ENV["RAILS_ENV"] = "test"
    Dir.mktmpdir("gitlab-multistore-wrapper-") do |dir|
      FileUtils.mkdir_p(File.join(dir, "config"))
      File.write(File.join(dir, "config", "redis.migrating_foo.yml"), YAML.dump("test" => primary_server.url))
      File.write(File.join(dir, "config", "redis.shared_state.yml"), YAML.dump("test" => secondary_server.url))
      Gitlab::Redis::Wrapper.rails_root = dir
      example.run
    end
  ensure
    Gitlab::Redis::Wrapper.rails_root = nil
    ENV.replace(saved_env)
  end

  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let!(:shared_state) { stub_const("Gitlab::Redis::SharedState", Class.new(Gitlab::Redis::Wrapper)) }
  let(:foo) { Gitlab::Redis::MigratingFoo }

  before { Gitlab::Redis::MultiStore.feature_flags = flags }

  after do
    Gitlab::Redis::MultiStore.feature_flags = nil
    foo.reset_pool!
    shared_state.reset_pool!
  end

  it "lends MultiStores from a pool named after the store, sized like Wrapper.pool" do
    foo.with do |redis|
      expect(redis).to be_a(Gitlab::Redis::MultiStore)
      expect(redis.instance_name).to eq("MigratingFoo")
    end
    expect(foo.multistore_pool).to be_a(Gitlab::Redis::MultiStoreConnectionPool)
    expect(foo.multistore_pool.size).to eq(foo.pool_size)
    expect(foo.pool_name).to eq("migrating_foo_multi_store")
    expect(foo.then { |redis| redis.ping }).to eq("PONG")
  end

  it "asks a subclass without .multistore for one" do
    bare = stub_const("Gitlab::Redis::Bare", Class.new(described_class))

    expect { bare.with { |redis| redis } }.to raise_error(NotImplementedError, /Gitlab::Redis::Bare must define \.multistore/)
  end

  # Walks a MultiStoreWrapper subclass through the runbook while `threads` threads write through
  # its `.with`; `primary` reads the new store (a cluster client for a cluster).
  def walk_the_runbook(wrapper, primary, threads:)
    name = Gitlab::Redis::MultiStore::FeatureFlags.underscore(wrapper.store_name)
    dual = :"use_primary_and_secondary_stores_for_#{name}"
    primary_default = :"use_primary_store_as_default_for_#{name}"
    secondary = secondary_server.client
    stop = false
    writers = Array.new(threads) do |t|
      Thread.new do
        written = 0
        until stop
          wrapper.with do |redis|
            redis.incr("count:{#{t}}")
            # One hash slot per thread ({t}), so a cluster takes the pipeline as one batch.
            redis.pipelined { |p| p.set("last:{#{t}}", written.to_s); p.sadd("seen:{#{t}}", written.to_s) }
          end
          written += 1
        end
        written
      end
    end
    # The re-sync settles keys written without pause too (writes wait out its copy of a key).
    drained = lambda do
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      sleep 0.05 until (empty = wrapper.with { |redis| redis.migration_status[:journal_keys] }.zero?) ||
                       Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      empty
    end

    sleep 0.3 # (1) the old store only
    flags.set(dual) # (2) dual-write
    sleep 0.3
    backfill = wrapper.with(&:backfill)
    expect(drained.call).to be(true), "the journal drains while the threads keep writing"
    verify = wrapper.with { |redis| redis.verify(repair: true) }
    flags.set(dual, primary_default) # (3)
    sleep 0.3
    flags.set(primary_default) # (4) the new store only
    sleep 0.3
    stop = true
    counts = writers.map(&:value)

    aggregate_failures do
      expect(backfill).to be_ok
      expect(verify.checked).to be_positive
      counts.each_with_index do |count, t|
        expect(count).to be > 10
        # Every write a caller made, before dual-write too, is on the new store, once.
        expect([t, primary.get("count:{#{t}}").to_i]).to eq([t, count])
        expect([t, primary.get("last:{#{t}}")]).to eq([t, (count - 1).to_s])
        expect([t, primary.scard("seen:{#{t}}")]).to eq([t, count])
        # The old store got everything until the last step.
        expect(secondary.get("count:{#{t}}").to_i).to be_between(1, count)
      end
    end
  ensure
    secondary&.close
  end

  it "walks the whole flag runbook under 8 threads writing through Foo.with, losing nothing" do
    walk_the_runbook(foo, primary_server.client, threads: 8)
  end

  it "does the same with a Redis Cluster as the new store, configured as a cluster: entry" do
    cluster = LocalRedisCluster.new
    File.write(File.join(Gitlab::Redis::Wrapper.rails_root, "config", "redis.migrating_cluster_foo.yml"),
               YAML.dump("test" => { "cluster" => cluster.urls }))
    wrapper = Gitlab::Redis::MigratingClusterFoo

    expect(wrapper.with { |redis| redis.connection[:host] }).to eq("127.0.0.1")
    walk_the_runbook(wrapper, Redis.new(cluster: cluster.urls), threads: 4)
  ensure
    Gitlab::Redis::MigratingClusterFoo.reset_pool!
    cluster&.cleanup
  end
end
