# frozen_string_literal: true

# Transactions, blocking commands, pub/sub, scans, scripts and connection commands with
# dual-write on: what each store holds afterwards.
RSpec.describe Gitlab::Redis::MultiStore, "special commands during dual-write" do
  let(:flags) { MultiStoreHelpers::FlagSource.new.tap { |f| f.enable(:use_primary_and_secondary_stores_for_special) } }
  let(:reports) { [] }
  let(:primary) { primary_server.client }
  let(:secondary) { secondary_server.client }

  subject(:store) do
    described_class.new(primary_server.url, secondary_server.url, "special", feature_flags: flags,
                                                                            on_error: ->(e, c) { reports << [e, c] })
  end

  describe "streams" do
    it "stores an XADD * entry under the ID the default store chose, on both stores" do
      # The old store's stream is ahead of the clock, the new one's is not: left to choose, the
      # two servers would pick different IDs.
      secondary.xadd("events", { "seed" => "1" }, id: "9999999999999-0")
      primary.xadd("events", { "seed" => "1" }, id: "5-0")

      ids = Array.new(3) { |i| store.xadd("events", { "n" => i.to_s }) }
      trimmed = store.xadd("events", { "n" => "3" }, maxlen: ["~", 100])

      expect(ids).to eq(%w[9999999999999-1 9999999999999-2 9999999999999-3])
      expect(trimmed).to eq("9999999999999-4")
      expect(primary.xrange("events").drop(1)).to eq(secondary.xrange("events").drop(1))
      expect(reports).to be_empty
    end

    it "does the same inside pipelines and transactions, with no pipeline diff to report" do
      secondary.xadd("events", { "seed" => "1" }, id: "9999999999999-0")

      store.pipelined { |p| p.set("k", "v"); p.xadd("events", { "n" => "1" }) }
      store.multi { |tx| tx.xadd("events", { "n" => "2" }, maxlen: ["~", 10]); tx.incr("n") }
      # The stream was on the old store only: the new store's part of it is re-synced whole.
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
      sleep 0.02 until store.migration_status[:journal_keys].zero? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      ids = %w[9999999999999-0 9999999999999-1 9999999999999-2]
      expect([primary.xrange("events").map(&:first), secondary.xrange("events").map(&:first)]).to eq([ids, ids])
      expect(reports).to be_empty
    end

    it "writes the new store's entry under the old store's ID even when the new store's stream is behind" do
      secondary.xadd("events", { "seed" => "1" }, id: "9999999999999-0")

      id = store.xadd("events", { "n" => "1" })
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
      sleep 0.02 until store.migration_status[:journal_keys].zero? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      expect(id).to eq("9999999999999-1")
      expect(primary.xrange("events").map(&:first)).to eq(%w[9999999999999-0 9999999999999-1])
    end
  end

  describe "consumer groups" do
    def pending_on(redis)
      redis.xpending("jobs", "workers")["size"]
    end

    it "delivers as many entries on the other store after a blocking XREADGROUP, so the group advances on both" do
      store.xgroup(:create, "jobs", "workers", "$", mkstream: true)
      reader = Thread.new { store.xreadgroup("workers", "worker-1", "jobs", ">", block: 5_000, count: 10) }
      sleep 0.02 until secondary.call(%w[client list]).include?("cmd=xreadgroup")
      store.xadd("jobs", { "job" => "1" })

      delivered = reader.value
      expect(delivered.fetch("jobs").map { |_id, fields| fields }).to eq([{ "job" => "1" }])
      # The replay may reach the other store before the entry does (XADD gets there second,
      # under the ID the default store chose): then the stream is re-synced, groups and all.
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
      sleep 0.02 until store.migration_status[:journal_keys].zero? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      expect([pending_on(primary), pending_on(secondary)]).to eq([1, 1])
      # Neither store has anything new left for the group: after the switch nothing is delivered twice.
      expect(primary.xreadgroup("workers", "worker-2", "jobs", ">")).to eq({})
      expect(secondary.xreadgroup("workers", "worker-2", "jobs", ">")).to eq({})

      store.xack("jobs", "workers", delivered.fetch("jobs").first.first)
      expect([pending_on(primary), pending_on(secondary)]).to eq([0, 0])
      expect(reports).to be_empty
    end
  end

  describe "transactions" do
    it "applies a watched transaction to both stores once it commits" do
      [primary, secondary].each { |r| r.set("balance", 10) }

      result = store.watch("balance") { store.multi { |tx| tx.incrby("balance", 5) } }

      expect(result).to eq([15])
      expect([primary.get("balance"), secondary.get("balance")]).to eq(%w[15 15])
    end

    it "applies nothing anywhere when the watched key changed" do
      [primary, secondary].each { |r| r.set("balance", 10) }

      result = store.watch("balance") do
        secondary.set("balance", 99)
        store.multi { |tx| tx.incrby("balance", 5) }
      end

      expect(result).to be_nil
      expect([primary.get("balance"), secondary.get("balance")]).to eq(%w[10 99])
    end

    it "replays a block-less MULTI … EXEC on the other store" do
      store.multi
      store.set("k", "v")
      store.incr("n")
      expect(store.exec).to eq(["OK", 1])

      [primary, secondary].each { |r| expect([r.get("k"), r.get("n")]).to eq(%w[v 1]) }
    end

    it "replays nothing after DISCARD" do
      store.multi
      store.set("k", "v")
      store.discard

      expect([primary.get("k"), secondary.get("k")]).to eq([nil, nil])
    end
  end

  describe "blocking commands" do
    before { [primary, secondary].each { |r| r.rpush("jobs", %w[a b c]) } }

    it "pops on the default store and removes the same element from the other" do
      expect(store.blpop("jobs", timeout: 1)).to eq(%w[jobs a])
      expect(store.brpop("jobs", timeout: 1)).to eq(%w[jobs c])

      expect(primary.lrange("jobs", 0, -1)).to eq(["b"])
      expect(secondary.lrange("jobs", 0, -1)).to eq(["b"])
    end

    it "mirrors a blocking move" do
      expect(store.blmove("jobs", "done", "LEFT", "RIGHT", timeout: 1)).to eq("a")

      [primary, secondary].each do |r|
        expect(r.lrange("jobs", 0, -1)).to eq(%w[b c])
        expect(r.lrange("done", 0, -1)).to eq(["a"])
      end
    end

    it "mirrors a sorted-set pop" do
      [primary, secondary].each { |r| r.zadd("z", [[1, "low"], [2, "high"]]) }

      expect(store.bzpopmin("z", timeout: 1)).to eq(["z", "low", 1.0])
      expect([primary.zrange("z", 0, -1), secondary.zrange("z", 0, -1)]).to eq([["high"], ["high"]])
    end

    it "changes nothing when it times out" do
      expect(store.blpop("empty", timeout: 0.1)).to be_nil
      expect(reports).to be_empty
    end
  end

  it "publishes to subscribers of both stores" do
    received = Queue.new
    listeners = [primary_server, secondary_server].map do |server|
      Thread.new do
        subscriber = server.client
        subscriber.subscribe("news") do |on|
          on.message do |_channel, message|
            received << [server.port, message]
            subscriber.unsubscribe
          end
        end
      end
    end
    sleep 0.02 until [primary, secondary].all? { |r| r.call(%i[pubsub numsub news]).last.positive? }

    expect(store.publish("news", "hello")).to eq(1)

    listeners.each { |t| t.join(2) }
    expect(Array.new(received.size) { received.pop }.sort).to eq(
      [[primary_server.port, "hello"], [secondary_server.port, "hello"]].sort
    )
  end

  it "pings both stores, reporting the non-default one when it is down" do
    down = described_class.new({ port: RedisServers.free_port }, secondary_server.url, "special",
                               feature_flags: flags, on_error: ->(e, c) { reports << [e, c] })

    expect(down.ping).to eq("PONG")
    expect(reports.map { |e, c| [e.class, c[:command_name]] }).to eq([[Redis::CannotConnectError, "ping"]])
  end

  it "scans the default store only, since a cursor belongs to one server" do
    primary.sadd("s", "only-on-primary")
    secondary.sadd("s", %w[a b])

    expect(store.sscan_each("s").to_a.sort).to eq(%w[a b])
    expect(store.scan_each(match: "s").to_a).to eq(["s"])
  end

  describe "scripts" do
    let(:script) { "return redis.call('incr', KEYS[1])" }

    it "loads a script on both stores, so EVALSHA works on either" do
      sha = store.script(:load, script)

      expect(primary.script(:exists, sha)).to be(true)
      expect(secondary.script(:exists, sha)).to be(true)
      expect(store.evalsha(sha, keys: ["n"])).to eq(1)
      expect([primary.get("n"), secondary.get("n")]).to eq(%w[1 1])
    end

    it "recovers NOSCRIPT on the other store by loading the script there" do
      sha = store.script(:load, script)
      primary.script(:flush)

      expect(store.evalsha(sha, keys: ["n"])).to eq(1)
      expect(primary.get("n")).to eq("1")
      expect(reports).to be_empty
    end

    it "recovers NOSCRIPT for a script loaded through it before dual-write began" do
      primary.script(:flush) # other examples loaded it there
      flags.disable(:use_primary_and_secondary_stores_for_special)
      sha = store.script(:load, script) # the secondary only
      flags.enable(:use_primary_and_secondary_stores_for_special)

      expect(store.evalsha(sha, keys: ["n"])).to eq(1)
      expect([primary.get("n"), secondary.get("n")]).to eq(%w[1 1])
      expect(reports).to be_empty
    end
  end

  it "mirrors a BLMPOP from the end it took, even with a key named like a direction" do
    store.rpush("left", %w[a b a])

    expect(store.call(:blmpop, 1, 1, "left", "RIGHT")).to eq(["left", ["a"]])
    expect([primary.lrange("left", 0, -1), secondary.lrange("left", 0, -1)]).to eq([%w[a b], %w[a b]])
  end

  it "closes the connections to both stores" do
    named = described_class.new({ url: primary_server.url, id: "closing" }, { url: secondary_server.url, id: "closing" },
                                "special", feature_flags: flags)
    connections = ->(r) { r.call(%i[client list]).lines.count { |l| l.include?("name=closing ") } }
    named.set("k", "v")
    expect([connections.call(primary), connections.call(secondary)]).to all(be >= 1)

    named.close
    sleep 0.05

    expect([connections.call(primary), connections.call(secondary)]).to eq([0, 0])
  end
end
