# frozen_string_literal: true

# Dual-write in the corners where a write used to be applied twice, to one store only, or to
# another database: one server named two ways, SELECT, the default store flipped between MULTI
# (or WATCH) and EXEC, XREADGROUP without BLOCK, a blocking command sent with `call`. Every
# example looks at what each store holds afterwards.
RSpec.describe Gitlab::Redis::MultiStore, "dual-write edges" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:reports) { [] }
  let(:dual_write) { :use_primary_and_secondary_stores_for_edges }
  let(:primary_default) { :use_primary_store_as_default_for_edges }
  let(:primary) { primary_server.client }
  let(:secondary) { secondary_server.client }

  def wait_for_resync(store)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
    sleep 0.02 until store.migration_status[:journal_keys].zero? ||
                     Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  end

  def multi_store(primary_store = primary_server.url, secondary_store = secondary_server.url, **options)
    described_class.new(primary_store, secondary_store, "edges", feature_flags: flags,
                                                                 on_error: ->(e, ctx) { reports << [e, ctx] }, **options)
  end

  DUAL_WRITE_STATES = {
    "dual-write, secondary default" => %i[use_primary_and_secondary_stores_for_edges],
    "dual-write, primary default" => %i[use_primary_and_secondary_stores_for_edges use_primary_store_as_default_for_edges]
  }.freeze

  describe "one server named two ways" do
    DUAL_WRITE_STATES.each do |state, enabled|
      it "applies each write once when the stores are localhost and 127.0.0.1 of one server (#{state})" do
        flags.enable(*enabled)
        store = multi_store("redis://localhost:#{primary_server.port}/0", primary_server.url)

        expect(store.incr("counter")).to eq(1)
        expect(store.lpush("list", "x")).to eq(1)
        expect(store.pipelined { |p| p.incr("counter"); p.rpush("list", "y") }).to eq([2, 2])
        expect(store.multi { |t| t.incr("counter") }).to eq([3])

        expect(primary.get("counter")).to eq("3")
        expect(primary.lrange("list", 0, -1)).to eq(%w[x y])
        expect(store.same_store?).to be(true)
        expect(reports).to be_empty
      end
    end

    it "applies each write once when the stores are the server's unix socket and its TCP port" do
      flags.enable(dual_write)
      store = multi_store("unix://#{primary_server.socket_path}", primary_server.url)

      expect(store.incr("counter")).to eq(1)
      expect(store.blpop("list", timeout: 0.01)).to be_nil
      expect(store.lpush("list", %w[a b])).to eq(2)
      expect(store.blpop("list", timeout: 0.1)).to eq(%w[list b]) # the pop is not mirrored onto itself

      expect(primary.get("counter")).to eq("1")
      expect(primary.lrange("list", 0, -1)).to eq(%w[a])
    end

    it "applies the first writes of threads starting at once only once" do
      flags.enable(dual_write)
      10.times do |round|
        store = multi_store("redis://localhost:#{primary_server.port}/0", primary_server.url)
        8.times.map { Thread.new { store.incr("counter:#{round}") } }.each(&:join)

        expect(primary.get("counter:#{round}")).to eq("8")
      end
    end

    it "applies once a transaction that SELECTs both databases of one server into the same one" do
      flags.enable(dual_write)
      store = multi_store("redis://localhost:#{primary_server.port}/0", "redis://127.0.0.1:#{primary_server.port}/1")
      store.ping # the stores are told to be one server

      expect(store.multi { |t| t.select(4); t.incr("c") }).to eq(["OK", 1])
      expect(primary_server.client(db: 4).get("c")).to eq("1")
    end

    it "writes both databases when the two names are one server but different databases" do
      flags.enable(dual_write)
      store = multi_store("redis://localhost:#{primary_server.port}/1", primary_server.url)

      expect(store.incr("counter")).to eq(1)

      expect([primary.get("counter"), primary_server.client(db: 1).get("counter")]).to eq(%w[1 1])
      expect(store.same_store?).to be(false)
    end

    it "writes both stores when they are different servers" do
      flags.enable(dual_write)
      store = multi_store

      expect(store.incr("counter")).to eq(1)

      expect([primary.get("counter"), secondary.get("counter")]).to eq(%w[1 1])
      expect(store.same_store?).to be(false)
    end
  end

  describe "SELECT moves both stores, like redis-rb's one connection" do
    it "lands the dual-written commands after select(1) in database 1 of both stores" do
      flags.enable(dual_write)
      store = multi_store

      expect(store.select(1)).to eq("OK")
      store.set("k", "v")
      store.incr("counter")

      [primary_server, secondary_server].each do |server|
        expect(server.client(db: 1).mget("k", "counter")).to eq(%w[v 1])
        expect(server.client.dbsize).to eq(0)
      end
      expect(store.get("k")).to eq("v")
      expect(store.connection[:db]).to eq(1)
    end

    it "moves the other store too while only the default store is used, so a later dual-write stays in one database" do
      store = multi_store
      store.select(2)
      flags.enable(dual_write)

      store.set("k", "v")

      expect([primary_server.client(db: 2).get("k"), secondary_server.client(db: 2).get("k")]).to eq(%w[v v])
      expect([primary.dbsize, secondary.dbsize]).to eq([0, 0])
    end

    it "follows a SELECT made inside a pipeline on both stores" do
      flags.enable(dual_write)
      store = multi_store

      expect(store.pipelined { |p| p.select(3); p.set("k", "in-pipeline") }).to eq(%w[OK OK])
      store.set("after", "pipeline")

      [primary_server, secondary_server].each do |server|
        expect(server.client(db: 3).mget("k", "after")).to eq(%w[in-pipeline pipeline])
        expect(server.client.dbsize).to eq(0)
      end
    end

    [[], DUAL_WRITE_STATES.values.first].each do |enabled|
      it "raises for a refused select(99) and keeps working on the database it had (#{enabled.empty? ? 'flags off' : 'dual-write'})" do
        flags.enable(*enabled)
        store = multi_store
        secondary.set("k", "old")

        expect { store.select(99) }.to raise_error(Redis::CommandError, /DB index is out of range/)
        expect(store.get("k")).to eq("old")
        expect(store.set("k2", "x")).to eq("OK")

        expect(secondary.get("k2")).to eq("x")
        expect(primary.get("k2")).to eq(enabled.empty? ? nil : "x")
        expect(store.connection[:db]).to eq(0)
      end
    end

    it "reports, without raising, a database the non-default store refuses" do
      flags.enable(dual_write)
      few_databases = dedicated_redis_server("--databases", "2")
      store = multi_store(few_databases.url, secondary_server.url)

      expect(store.select(5)).to eq("OK")

      expect(reports.map { |e, ctx| [e.class, ctx[:command_name]] }).to eq([[Redis::CommandError, "select"]])
    end
  end

  # Found by the fuzzer (seed 174144173): keys journaled in database 1 were re-synced in
  # database 0 after a SELECT, so database 1 of the new store never got them, with the journal
  # empty and nothing asking for a verify.
  describe "a SELECT while keys wait for re-sync" do
    it "asks for a full verify instead of re-syncing the keys in the wrong database" do
      flags.enable(:use_primary_and_secondary_stores_for_edges)
      hung = dedicated_redis_server
      store = multi_store({ url: hung.url, timeout: 0.2 }, secondary_server.url, breaker_threshold: 1, breaker_cool_down: 5)
      store.select(1)
      Process.kill(:STOP, hung.pid)
      begin
        3.times { |i| store.set("in-db1:#{i}", i.to_s) } # the new store misses them: journaled
      ensure
        Process.kill(:CONT, hung.pid)
      end
      expect(store.migration_status[:journal_keys]).to be_positive

      store.select(0)
      status = store.migration_status

      aggregate_failures do
        expect(status[:journal_keys]).to eq(0)
        expect(status[:full_verify_needed]).to be(true)
        expect(status[:safe_to_switch]).to be(false)
      end
      store.select(1)
      sleep 5.1 # the breaker's cool-down: the repair reaches the new store
      expect(store.verify(repair: true)).to be_in_agreement
      new_store = Redis.new(url: hung.url(1))
      expect(new_store.mget("in-db1:0", "in-db1:1", "in-db1:2")).to eq(%w[0 1 2])
      new_store.close
    end
  end

  describe "a transaction whose default store flips between MULTI (or WATCH) and EXEC" do
    [[:secondary, :primary], [:primary, :secondary]].each do |from, to|
      context "from the #{from} to the #{to} as the default" do
        before do
          flags.enable(dual_write)
          flags.enable(primary_default) if from == :primary
          [primary, secondary].each { |c| c.set("c", "10") }
        end

        def flip(to)
          to == :primary ? flags.enable(primary_default) : flags.disable(primary_default)
        end

        it "applies a block-less MULTI … EXEC once on each store" do
          store = multi_store
          store.multi
          store.incr("c")
          flip(to)

          expect(store.exec).to eq([11])
          expect([primary.get("c"), secondary.get("c")]).to eq(%w[11 11])
        end

        it "applies a WATCH + multi block once on each store" do
          store = multi_store
          store.watch("c") do
            flip(to)
            expect(store.multi { |t| t.incr("c") }).to eq([11])
          end

          expect([primary.get("c"), secondary.get("c")]).to eq(%w[11 11])
        end
      end
    end

    DUAL_WRITE_STATES.each do |state, enabled|
      it "brings writes made while a WATCH is held to the other store too (#{state})" do
        flags.enable(*enabled)
        store = multi_store
        store.set("a", "1")
        store.watch("w") do
          store.set("a", "2")
          expect(store.get("a")).to eq("2")
          store.hset("h", "f", "v")
          store.pipelined { |p| p.incr("n"); p.rpush("l", "x") }
          store.multi { |t| t.incr("n") }
        end
        wait_for_resync(store)

        [primary, secondary].each do |client|
          expect(client.mget("a", "n")).to eq(%w[2 2])
          expect(client.hgetall("h")).to eq({ "f" => "v" })
          expect(client.lrange("l", 0, -1)).to eq(["x"])
        end
      end
    end

    it "replays on the other store what a block-less MULTI queued through a pipeline or a blocking pop" do
      flags.enable(dual_write)
      store = multi_store
      store.rpush("list", %w[1 2])
      store.set("a", "10")

      store.multi
      store.pipelined { |p| p.incr("a"); p.incr("b") }
      store.blpop("list", timeout: 1)
      expect(store.exec).to eq([11, 1, %w[list 1]])

      [primary, secondary].each do |client|
        expect(client.mget("a", "b")).to eq(%w[11 1])
        expect(client.lrange("list", 0, -1)).to eq(["2"])
      end
    end

    it "moves both stores to the database a SELECT queued in a block-less MULTI chose, as redis-rb's connection" do
      flags.enable(dual_write)
      store = multi_store

      store.multi
      store.select(1)
      store.set("in-multi", "v")
      expect(store.exec).to eq(%w[OK OK])
      40.times { |i| store.set("after:#{i}", i) }

      [primary_server, secondary_server].each do |server|
        expect(server.client(db: 1).dbsize).to eq(41)
        expect(server.client.dbsize).to eq(0)
      end
    end

    it "keeps the pool on its database after a RESET sent as a command" do
      store = multi_store
      store.select(1)
      store.call(:reset)
      20.times { |i| store.set("k#{i}", i) }

      expect(secondary_server.client(db: 1).dbsize).to eq(20)
      expect(secondary.dbsize).to eq(0)
    end

    it "gives the new default store the transaction when dual-write was turned off at the same time" do
      flags.enable(dual_write)
      store = multi_store
      store.multi
      store.set("k", "v")
      flags.enable(primary_default)
      flags.disable(dual_write) # straight to "primary only"

      expect(store.exec).to eq(["OK"])
      expect([primary.get("k"), secondary.get("k")]).to eq(%w[v v])
    end
  end

  describe "XREADGROUP without BLOCK" do
    DUAL_WRITE_STATES.each do |state, enabled|
      it "delivers on both stores, so the consumer group's pending entries agree (#{state})" do
        flags.enable(*enabled)
        store = multi_store
        store.xadd("s", { "f" => "v" }, id: "0-1")
        store.xgroup(:create, "s", "g", "$")
        store.xadd("s", { "f" => "v" }, id: "0-2")
        store.xadd("s", { "f" => "v" }, id: "0-3")

        expect(store.xreadgroup("g", "c1", "s", ">")["s"].map(&:first)).to eq(%w[0-2 0-3])

        expect(primary.xpending("s", "g")).to eq(secondary.xpending("s", "g"))
        expect(primary.xpending("s", "g")["size"]).to eq(2)
        expect(reports).to be_empty
      end
    end

    it "reads without BLOCK with XREAD as any read, falling back to the secondary on a miss" do
      flags.enable(dual_write)
      store = multi_store
      secondary.xadd("s", { "f" => "v" }, id: "0-1")

      expect(store.xread("s", "0")).to eq({ "s" => [["0-1", { "f" => "v" }]] })
    end
  end

  it "mirrors what a blocking command sent with `call` took, like the same command called by name" do
    flags.enable(dual_write)
    store = multi_store
    store.rpush("jobs", %w[a b c])

    expect(store.call(:blpop, "jobs", 1)).to eq(%w[jobs a])

    expect([primary.lrange("jobs", 0, -1), secondary.lrange("jobs", 0, -1)]).to eq([%w[b c], %w[b c]])
  end

  describe "a write the stores answer differently" do
    DUAL_WRITE_STATES.each do |state, enabled|
      it "brings a counter the new store started from zero in line, reading it from the default meanwhile (#{state})" do
        secondary.set("counter", "5") # written before dual-write began
        primary.set("counter", "5") if enabled.include?(:use_primary_store_as_default_for_edges)
        flags.enable(*enabled)
        store = multi_store

        first = store.incr("counter")
        reads = [store.get("counter")]
        wait_for_resync(store)
        reads << store.get("counter")

        expect(first).to eq(6)
        expect(reads).to eq(%w[6 6])
        expect([primary.get("counter"), secondary.get("counter")]).to eq(%w[6 6])
      end
    end

    it "brings a set in line after SPOP took a different member on each store" do
      flags.enable(dual_write)
      store = multi_store
      store.sadd("s", %w[a b c d e f g h])

      popped = store.spop("s")
      wait_for_resync(store)

      expect(secondary.smembers("s")).not_to include(popped)
      expect(primary.smembers("s").sort).to eq(secondary.smembers("s").sort)
      expect(store.verify.in_agreement?).to be(true)
    end

    it "does not take PUBLISH's subscriber counts for a difference in data" do
      flags.enable(dual_write)
      store = multi_store
      subscriber = secondary_server.client
      listener = Thread.new do
        subscriber.subscribe_with_timeout(1, "news") { |on| on.message { nil } }
      rescue Redis::TimeoutError
        nil # nothing more arrived within the second
      ensure
        subscriber.close # not left subscribed on the shared server for later examples
      end
      sleep 0.2

      store.publish("news", "hello") # 1 subscriber on one store, 0 on the other

      expect(store.migration_status).to include(journal_keys: 0, full_verify_needed: false)
    ensure
      listener&.join
    end
  end

  describe "dual-write turned off and on again" do
    it "reads the default store only until a full verify, since the other store missed the writes in between" do
      flags.enable(dual_write)
      store = multi_store
      store.set("k", "1")
      flags.disable(dual_write)
      store.set("k", "2") # the secondary only
      flags.enable(dual_write)

      expect(store.get("k")).to eq("2") # the primary still has "1"
      expect(store.migration_status).to include(full_verify_needed: true, safe_to_switch: false)
      expect(store.verify(repair: true).in_agreement?).to be(true)
      expect(primary.get("k")).to eq("2")
      expect(store.migration_status[:full_verify_needed]).to be(false)
    end

    it "does not bring back, through a fallback read, a key deleted while the primary was the only store" do
      flags.enable(dual_write, primary_default)
      store = multi_store
      store.set("session", "data")
      flags.disable(dual_write) # step 6: primary only
      store.del("session")
      flags.enable(dual_write) # rolled back to step 5

      expect(store.get("session")).to be_nil
      expect(secondary.get("session")).to eq("data")
      expect(store.verify(repair: true).in_agreement?).to be(true)
      expect(secondary.get("session")).to be_nil
    end
  end

  describe "pub/sub during dual-write" do
    # Subscribes through the MultiStore in a thread until `count` messages arrived (or 2 s),
    # returning them.
    def listen(store, count, pattern: false)
      messages = Queue.new
      subscribed = Queue.new
      thread = Thread.new do
        handler = lambda do |on|
          on.subscribe { |_c, _n| subscribed << true }
          on.psubscribe { |_c, _n| subscribed << true }
          on.message { |channel, message| messages << [channel, message] }
          on.pmessage { |_pattern, channel, message| messages << [channel, message] }
        end
        pattern ? store.psubscribe_with_timeout(2, "ne*", &handler) : store.subscribe_with_timeout(2, "news", &handler)
      rescue Redis::TimeoutError
        nil
      end
      subscribed.pop
      sleep 0.1 # the other store's subscription is on its way too
      [thread, messages]
    end

    DUAL_WRITE_STATES.each do |state, enabled|
      it "hears messages published on either store, and once one published through a MultiStore (#{state})" do
        flags.enable(*enabled)
        store = multi_store
        thread, messages = listen(store, 3)

        primary.publish("news", "on the new store")
        secondary.publish("news", "on the old store")
        multi_store.publish("news", "through a MultiStore")
        sleep 0.3
        thread.kill

        heard = Array.new(messages.size) { messages.pop }
        expect(heard.map(&:last).sort).to eq(["on the new store", "on the old store", "through a MultiStore"])
      end
    end

    it "delivers a payload published twice through a MultiStore twice, and pattern messages once each" do
      flags.enable(dual_write)
      store = multi_store
      thread, messages = listen(store, 2, pattern: true)

      2.times { multi_store.publish("news", "again") }
      sleep 0.3
      thread.kill

      expect(Array.new(messages.size) { messages.pop }).to eq([%w[news again], %w[news again]])
    end

    it "listens on the default store only with dual-write off, as before" do
      store = multi_store
      thread, messages = listen(store, 1)

      primary.publish("news", "not heard")
      secondary.publish("news", "heard")
      sleep 0.3
      thread.kill

      expect(Array.new(messages.size) { messages.pop }.map(&:last)).to eq(["heard"])
    end

    it "reports the default store's subscription counts, as one redis-rb connection does" do
      flags.enable(dual_write)
      store = multi_store
      counts = []
      store.subscribe_with_timeout(1, "a", "b") do |on|
        on.subscribe { |_channel, count| counts << count; store.unsubscribe if count == 2 }
        on.unsubscribe { |_channel, count| counts << count }
      end

      expect(counts).to eq([1, 2, 1, 0])
      expect(store.set("after", "1")).to eq("OK")
    end
  end
end
