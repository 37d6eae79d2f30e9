# frozen_string_literal: true

# Mirrors GitLab's multi_store_spec scenario by scenario, against a real pair of redis-servers:
# each example asserts what each server holds (read with a plain redis-rb client), what was
# reported through on_error, and what was counted in the Prometheus metrics.
RSpec.describe Gitlab::Redis::MultiStore do
  let(:instance_name) { "test_store" }
  let(:dual_write) { :use_primary_and_secondary_stores_for_test_store }
  let(:primary_default) { :use_primary_store_as_default_for_test_store }
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:reports) { [] }
  let(:on_error) { ->(exception, context) { reports << [exception, context] } }
  let(:primary) { primary_server.client }
  let(:secondary) { secondary_server.client }

  subject(:store) do
    described_class.new(primary_server.url, secondary_server.url, instance_name,
                        feature_flags: flags, on_error: on_error)
  end

  def reported_classes
    reports.map { |exception, _context| exception.class }
  end

  describe "construction (scenario 1)" do
    it "raises ArgumentError with GitLab's messages for missing or invalid arguments" do
      redis = Redis.new
      expect { described_class.new(nil, redis, "x") }.to raise_error(ArgumentError, "primary_store is required")
      expect { described_class.new(redis, nil, "x") }.to raise_error(ArgumentError, "secondary_store is required")
      expect { described_class.new(redis, redis, nil) }.to raise_error(ArgumentError, "instance_name is required")
      expect { described_class.new(Object.new, redis, "x") }.to raise_error(ArgumentError, "invalid primary_store")
      expect { described_class.new(redis, 42, "x") }.to raise_error(ArgumentError, "invalid secondary_store")
      expect { described_class.new(redis, redis, "x", read_strategy: :sometimes) }.to raise_error(ArgumentError, /read_strategy/)
    end

    it "keeps the stores and the name it was given, and is a Redis" do
      p_client = primary_server.client
      s_client = secondary_server.client
      built = described_class.new(p_client, s_client, instance_name)

      expect(built.primary_store).to be(p_client)
      expect(built.secondary_store).to be(s_client)
      expect(built.instance_name).to eq(instance_name)
      expect(built).to be_a(Redis)
      expect(built.to_s).to include("test_store", primary_server.port.to_s, secondary_server.port.to_s)
    end

    it "responds to every redis-rb command method" do
      command_methods = Redis::Commands.instance_methods
      expect(command_methods.size).to be > 200
      expect(command_methods.reject { |m| store.respond_to?(m) }).to be_empty
    end
  end

  describe "flags" do
    it "uses the secondary as default and neither flag when no flag source answers" do
      expect(store.use_primary_and_secondary_stores?).to be(false)
      expect(store.use_primary_store_as_default?).to be(false)
      expect(store.default_store).to eq(secondary_server.url)
      expect(store.non_default_store).to eq(primary_server.url)
    end

    it "follows a flip on the very next call, without a restart" do
      flags.enable(primary_default)
      expect(store.default_store).to eq(primary_server.url)
      flags.disable(primary_default)
      expect(store.default_store).to eq(secondary_server.url)
    end

    it "reuses flag values for flag_cache_seconds when asked to, then reads them again" do
      calls = 0
      counting = ->(_flag) { calls += 1; false }
      cached = described_class.new(primary_server.url, secondary_server.url, instance_name,
                                   feature_flags: counting, flag_cache_seconds: 0.2)

      5.times { cached.ping }
      expect(calls).to eq(2) # both flags, once

      sleep 0.25
      cached.ping
      expect(calls).to eq(4)
    end

    it "accepts a flag source answering enabled? and a global one" do
      source = Struct.new(:on) { def enabled?(flag) = on.include?(flag) }.new([dual_write])
      expect(described_class.new(primary_server.url, secondary_server.url, instance_name, feature_flags: source)
        .use_primary_and_secondary_stores?).to be(true)

      described_class.feature_flags = ->(flag) { flag == primary_default }
      expect(described_class.new(primary_server.url, secondary_server.url, instance_name).use_primary_store_as_default?)
        .to be(true)
    ensure
      described_class.feature_flags = nil
    end

    it "treats a raising flag source as off, with no error to the caller (scenario 16)" do
      raising = described_class.new(primary_server.url, secondary_server.url, instance_name,
                                    feature_flags: ->(_flag) { raise "relation \"features\" does not exist" },
                                    on_error: on_error)

      expect(raising.set("k", "v")).to eq("OK")
      expect(raising.use_primary_and_secondary_stores?).to be(false)
      expect(secondary.get("k")).to eq("v")
      expect(primary.get("k")).to be_nil
    end

    it "does not loop when the flag source reads the store being migrated: the inner call sees flags off" do
      looping = nil
      looping = described_class.new(primary_server.url, secondary_server.url, instance_name,
                                    feature_flags: ->(flag) { flag == dual_write && looping.get("cached-flag") == "on" },
                                    on_error: on_error)
      secondary.set("cached-flag", "on")

      expect(looping.use_primary_and_secondary_stores?).to be(true)
      expect(looping.set("k", "v")).to eq("OK")
      expect(primary.get("k")).to eq("v")
      expect(primary.get("cached-flag")).to be_nil
    end

    describe "ENV overrides win over the flag source, both ways (scenario 17)" do
      around do |example|
        names = [dual_write, primary_default].map { |f| Gitlab::Redis::MultiStore::FeatureFlags.env_name(f) }
        saved = names.to_h { |n| [n, ENV[n]] }
        example.run
      ensure
        saved.each { |n, v| ENV[n] = v }
      end

      it "turns dual-write off for an emergency rollback" do
        flags.enable(dual_write)
        ENV["GITLAB_MULTISTORE_USE_PRIMARY_AND_SECONDARY_STORES_FOR_TEST_STORE"] = "false"

        store.set("k", "v")

        expect(store.use_primary_and_secondary_stores?).to be(false)
        expect(primary.get("k")).to be_nil
      end

      it "turns a flag on that the source has off" do
        ENV["GITLAB_MULTISTORE_USE_PRIMARY_STORE_AS_DEFAULT_FOR_TEST_STORE"] = "true"

        store.set("k", "v")

        expect(store.use_primary_store_as_default?).to be(true)
        expect(primary.get("k")).to eq("v")
        expect(secondary.get("k")).to be_nil
      end
    end
  end

  context "with both flags off (scenario 2)" do
    it "reads and writes the secondary only and leaves the primary untouched" do
      primary.set("only-on-primary", "p")

      expect(store.set("k", "v")).to eq("OK")
      expect(store.sadd?("s", "m")).to be(true)
      expect(store.get("only-on-primary")).to be_nil

      expect(secondary.get("k")).to eq("v")
      expect(secondary.smembers("s")).to eq(["m"])
      expect(primary.keys("*")).to eq(["only-on-primary"])
      expect(reports).to be_empty
    end
  end

  context "with dual-write on" do
    before { flags.enable(dual_write) }

    describe "reads" do
      it "answers from the primary when it has the value, with no fallback (scenario 3)" do
        primary.set("k", "from-primary")
        secondary.set("k", "from-secondary")

        expect { expect(store.get("k")).to eq("from-primary") }
          .not_to(change { metric_value("gitlab_redis_multi_store_read_fallback_total", instance_name: instance_name) })
        expect(reports).to be_empty
      end

      {
        get: [->(r) { r.set("k", "v") }, ->(s) { s.get("k") }, "v"],
        mget: [->(r) { r.set("k", "v") }, ->(s) { s.mget("k", "other") }, ["v", nil]],
        hget: [->(r) { r.hset("h", "f", "v") }, ->(s) { s.hget("h", "f") }, "v"],
        hgetall: [->(r) { r.hset("h", "f", "v") }, ->(s) { s.hgetall("h") }, { "f" => "v" }],
        smembers: [->(r) { r.sadd("s", "m") }, ->(s) { s.smembers("s") }, ["m"]],
        scard: [->(r) { r.sadd("s", "m") }, ->(s) { s.scard("s") }, 1],
        exists: [->(r) { r.set("k", "v") }, ->(s) { s.exists("k") }, 1],
        llen: [->(r) { r.rpush("l", "x") }, ->(s) { s.llen("l") }, 1],
        ttl: [->(r) { r.set("k", "v", ex: 100) }, ->(s) { s.ttl("k") }, 100],
        zrange: [->(r) { r.zadd("z", 1, "a") }, ->(s) { s.zrange("z", 0, -1) }, ["a"]]
      }.each do |command, (seed, read, expected)|
        it "#{command}: falls back to the secondary when the primary misses, reported and counted (scenario 4)" do
          seed.call(secondary)

          delta = metric_delta("gitlab_redis_multi_store_read_fallback_total", instance_name: instance_name, reason: "miss") do
            expect(read.call(store)).to eq(expected)
          end

          expect(delta).to eq(1)
          expect(reported_classes).to eq([Gitlab::Redis::MultiStore::ReadFromPrimaryError])
          expect(reports.first.last).to include(instance_name: instance_name, command_name: command.to_s)
        end
      end

      it "falls back when the primary raises, reporting the primary's error (scenario 5)" do
        primary.rpush("k", "a list on the primary")
        secondary.set("k", "v")

        delta = metric_delta("gitlab_redis_multi_store_read_fallback_total", instance_name: instance_name, reason: "error") do
          expect(store.get("k")).to eq("v")
        end

        expect(delta).to eq(1)
        exception, context = reports.first
        expect(exception).to be_a(Redis::CommandError)
        expect(context).to include(store: :primary, command_name: "get", message: "Failed to read from primary store")
      end

      it "returns nil and reports nothing when both stores miss (scenario 6)" do
        expect(store.get("nowhere")).to be_nil
        expect(store.smembers("nowhere")).to eq([])
        expect(reports).to be_empty
      end

      it "reads the default store only with read_strategy: :default_only" do
        default_only = described_class.new(primary_server.url, secondary_server.url, instance_name,
                                           feature_flags: flags, on_error: on_error, read_strategy: :default_only)
        primary.set("k", "from-primary")
        secondary.set("k", "from-secondary")

        expect(default_only.get("k")).to eq("from-secondary")
        expect(default_only.get("missing")).to be_nil
        expect(reports).to be_empty
      end
    end

    describe "writes" do
      {
        set: ->(s) { s.set("k", "v") },
        setnx: ->(s) { s.setnx("k", "v") },
        setex: ->(s) { s.setex("k", 100, "v") },
        sadd: ->(s) { s.sadd("k", %w[a b]) },
        hset: ->(s) { s.hset("k", "f", "v") },
        incr: ->(s) { s.incr("k") },
        rpush: ->(s) { s.rpush("k", "x") },
        zadd: ->(s) { s.zadd("k", 1, "a") },
        eval: ->(s) { s.eval("return redis.call('set', KEYS[1], 'v')", keys: ["k"]) }
      }.each do |command, write|
        it "#{command}: both stores hold the same data afterwards (scenario 7)" do
          write.call(store)

          expect(contents(primary, "k")).not_to eq(["none", nil])
          expect(contents(primary, "k")).to eq(contents(secondary, "k"))
          expect(reports).to be_empty
        end
      end

      it "keeps TTLs on both stores" do
        store.set("session", "data", ex: 300)

        expect(primary.ttl("session")).to be_within(1).of(300)
        expect(secondary.ttl("session")).to be_within(1).of(300)
      end

      it "removes keys from both stores" do
        [primary, secondary].each { |r| r.set("k", "v") }
        expect(store.del("k")).to eq(1)
        expect(primary.exists?("k") || secondary.exists?("k")).to be(false)
      end

      it "returns the default store's reply" do
        primary.set("counter", 10)

        expect(store.incr("counter")).to eq(1)
        expect(primary.get("counter")).to eq("11")
      end
    end

    describe "when the primary fails (scenarios 8 and faults)" do
      let(:closed_port) { RedisServers.free_port }

      subject(:store) do
        described_class.new({ port: closed_port }, secondary_server.url, instance_name,
                            feature_flags: flags, on_error: on_error)
      end

      it "still writes the secondary, reports and counts the primary's error, and raises nothing" do
        delta = metric_delta("gitlab_redis_multi_store_non_default_write_failures_total", instance_name: instance_name) do
          expect(store.set("k", "v")).to eq("OK")
        end

        expect(secondary.get("k")).to eq("v")
        expect(delta).to eq(1)
        exception, context = reports.first
        expect(exception).to be_a(Redis::CannotConnectError)
        expect(context).to include(store: :primary, command_name: "set", instance_name: instance_name)
      end

      it "serves reads from the secondary" do
        secondary.set("k", "v")

        expect(store.get("k")).to eq("v")
        expect(reported_classes).to eq([Redis::CannotConnectError])
      end

      it "neither raises nor waits past the timeout when the primary hangs" do
        hanging = dedicated_redis_server
        store = described_class.new({ port: hanging.port, timeout: 0.3, reconnect_attempts: 0 }, secondary_server.url,
                                    instance_name, feature_flags: flags, on_error: on_error)
        store.ping
        Process.kill(:STOP, hanging.pid)
        begin
          expect(store.set("k", "v")).to eq("OK")
          expect(store.get("k")).to eq("v")
        ensure
          Process.kill(:CONT, hanging.pid)
        end

        expect(secondary.get("k")).to eq("v")
        expect(reported_classes).to all(be(Redis::TimeoutError))
      end
    end

    it "raises the secondary's error when the secondary (the default store) fails (scenario 9)" do
      closed_port = RedisServers.free_port
      failing = described_class.new(primary_server.url, { port: closed_port }, instance_name,
                                    feature_flags: flags, on_error: on_error)

      expect { failing.set("k", "v") }.to raise_error(Redis::CannotConnectError, /127\.0\.0\.1:#{closed_port}/)
    end

    describe "pipelines (scenario 14)" do
      it "sends every command to both stores and reports nothing when the results agree" do
        result = store.pipelined do |p|
          p.set("k", "v")
          p.incr("counter")
          p.expire("k", 100)
        end

        expect(result).to eq(["OK", 1, true])
        [primary, secondary].each do |r|
          expect(r.get("k")).to eq("v")
          expect(r.get("counter")).to eq("1")
          expect(r.ttl("k")).to be_within(1).of(100)
        end
        expect(reports).to be_empty
      end

      it "reports and counts a difference, returning the default store's results" do
        primary.set("counter", 5)

        delta = metric_delta("gitlab_redis_multi_store_pipelined_diff_error_total", instance_name: instance_name) do
          expect(store.multi { |tx| tx.incr("counter") }).to eq([1])
        end

        expect(delta).to eq(1)
        expect(reported_classes).to eq([Gitlab::Redis::MultiStore::PipelinedDiffError])
        # The differing key is journaled and re-synced from the default store in the background.
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
        sleep 0.02 until primary.get("counter") == "1" || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        expect(primary.get("counter")).to eq("1")
      end

      it "reads a read-only pipeline from the primary, falling back to the secondary (scenario 15)" do
        secondary.set("k", "v")

        result = store.with_readonly_pipeline do
          store.pipelined { |p| p.get("k") }
        end

        expect(result).to eq(["v"])
        expect(primary.get("k")).to be_nil
        expect(reported_classes).to eq([Gitlab::Redis::MultiStore::ReadFromPrimaryError])
      end

      it "refuses nested read-only pipeline blocks" do
        expect do
          store.with_readonly_pipeline { store.with_readonly_pipeline { nil } }
        end.to raise_error(Gitlab::Redis::MultiStore::NestedReadonlyPipelineError)
        expect(store.readonly_pipeline?).to be(false)
      end

      it "keeps the read-only marker to the calling thread" do
        store.with_readonly_pipeline do
          expect(Thread.new { store.readonly_pipeline? }.value).to be(false)
          expect(store.readonly_pipeline?).to be(true)
        end
      end
    end
  end

  context "with the primary as default (scenario 10)" do
    before { flags.enable(dual_write, primary_default) }

    it "returns the primary's replies and still writes both stores" do
      [primary, secondary].each { |r| r.set("both", 10) }
      secondary.set("counter", 10)

      expect(store.incr("both")).to eq(11)
      expect([primary.get("both"), secondary.get("both")]).to eq(%w[11 11])
      expect(store.incr("counter")).to eq(1)
      expect(store.get("counter")).to eq("1")
      # The stores answered differently (the secondary held 10): the secondary is brought in
      # line with the default store by the re-sync (the INCR reached it too, making it 11 first).
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
      sleep 0.02 until secondary.get("counter") == "1" || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      expect(secondary.get("counter")).to eq("1")
      expect(store.default_store).to eq(primary_server.url)
      expect(store.non_default_store).to eq(secondary_server.url)
    end

    it "reports a failure on the secondary, now the non-default store, without raising" do
      closed_port = RedisServers.free_port
      failing = described_class.new(primary_server.url, { port: closed_port }, instance_name,
                                    feature_flags: flags, on_error: on_error)

      expect(failing.set("k", "v")).to eq("OK")
      expect(primary.get("k")).to eq("v")
      expect(reports.first.last).to include(store: :secondary)
    end
  end

  context "with the primary as default and dual-write off (scenario 11)" do
    before { flags.enable(primary_default) }

    it "touches the primary only" do
      secondary.set("k", "old")

      expect(store.set("new", "v")).to eq("OK")
      expect(store.get("k")).to be_nil

      expect(primary.get("new")).to eq("v")
      expect(secondary.keys("*")).to eq(["k"])
      expect(reports).to be_empty
    end
  end

  it "applies a write once when both stores are the same server and db (scenario 12)" do
    flags.enable(dual_write)
    same = described_class.new(secondary_server.url, secondary_server.client, instance_name,
                               feature_flags: flags, on_error: on_error)

    expect(same.same_store?).to be(true)
    expect(same.incr("counter")).to eq(1)
    expect(secondary.get("counter")).to eq("1")
  end

  describe "commands not in the command table (scenario 13)" do
    it "sends them to the default store, counts and reports them" do
      errors_before = secondary.info("stats")["total_error_replies"].to_i

      delta = metric_delta("gitlab_redis_multi_store_method_missing_total", instance_name: instance_name,
                                                                             command: "json.get") do
        expect { store.call(["JSON.GET", "k"]) }.to raise_error(Redis::CommandError, /unknown command/)
      end

      expect(delta).to eq(1)
      expect(secondary.info("stats")["total_error_replies"].to_i).to eq(errors_before + 1)
      expect(reported_classes).to eq([Gitlab::Redis::MultiStore::MethodMissingError])
      expect(reports.first.last).to include(command_name: "json.get")
    end

    it "raises MethodMissingError in strict mode, before sending anything" do
      strict = described_class.new(primary_server.url, secondary_server.url, instance_name,
                                   feature_flags: flags, on_error: on_error, strict: true)
      errors_before = secondary.info("stats")["total_error_replies"].to_i

      expect { strict.call(["JSON.GET", "k"]) }.to raise_error(Gitlab::Redis::MultiStore::MethodMissingError)
      expect(secondary.info("stats")["total_error_replies"].to_i).to eq(errors_before)
    end
  end

  it "labels reports and metrics with the instance name, never with values (scenario 18)" do
    flags.enable(dual_write)
    secondary.set("secret-session", "password=hunter2")

    store.get("secret-session")

    exception, context = reports.first
    expect(context.keys).to contain_exactly(:instance_name, :command_name, :store)
    expect([exception.message, context.values.join(" ")].join).not_to include("hunter2", "secret-session")
    expect(described_class.metrics_text).to include(%(instance_name="test_store"))
    expect(described_class.metrics_text).not_to include("hunter2")
  end

  it "logs reports to the configured logger by default" do
    log = StringIO.new
    previous = described_class.logger
    described_class.logger = Logger.new(log)
    flags.enable(dual_write)
    secondary.set("k", "v")
    quiet = described_class.new(primary_server.url, secondary_server.url, instance_name, feature_flags: flags)

    quiet.get("k")

    expect(log.string).to include("ReadFromPrimaryError", "instance_name=test_store", "command_name=get")
  ensure
    described_class.logger = previous
  end
end
