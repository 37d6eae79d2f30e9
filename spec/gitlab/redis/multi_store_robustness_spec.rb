# frozen_string_literal: true

require "logger"
require "pp"
require "securerandom"
require "stringio"
require "tmpdir"

# Robustness of one shared MultiStore: threads and forked children on the same instance, input
# no caller should send (but some will), a million commands, GC compaction under traffic, and
# passwords that must never leak.
module MultiStoreRobustness
  # Plain redis-rb and the MultiStore each get their own database of the same server.
  PLAIN_DB = 1
  MULTI_DB = 2
  FUZZ_SEED = 20_240_613
  FUZZ_WORDS = %w[EX PX NX XX GET KEEPTTL h k v].freeze

  def self.rss_mb
    File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i / 1024.0
  end

  def self.monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  Outcome = ::CallOutcome

  # A thread's own keys, written and read back: any reply that is not the one this thread
  # expects is a mixed-up reply.
  def self.own_keys_round(store, tag, round)
    key = "#{tag}:k#{round % 10}"
    value = "#{tag}:#{round}:#{SecureRandom.hex(4)}"
    wrong = []
    wrong << [:set, key] unless store.set(key, value) == "OK"
    got = store.get(key)
    wrong << [:get, key, value, got] unless got == value
    counter = store.incr("#{tag}:n")
    wrong << [:incr, round, counter] unless counter == round
    replies = store.pipelined do |p|
      p.set("#{key}:p", value.reverse)
      p.get("#{key}:p")
      p.hset("#{tag}:h", "f", value)
      p.hget("#{tag}:h", "f")
    end
    wrong << [:pipelined, value, replies] unless replies.values_at(0, 1, 3) == ["OK", value.reverse, value]
    got = store.mget(key, "#{key}:p")
    wrong << [:mget, value, got] unless got == [value, value.reverse]
    wrong
  end

  RSpec.describe Gitlab::Redis::MultiStore, "robustness" do
    let(:flags) { MultiStoreHelpers::FlagSource.new }
    let(:instance_name) { "robust_#{SecureRandom.hex(4)}" }
    let(:reports) { Queue.new }
    let(:clients) { [] }

    after { clients.each(&:close) }

    def dual_write!(primary_default: false)
      flags.enable(:"use_primary_and_secondary_stores_for_#{instance_name}")
      flags.enable(:"use_primary_store_as_default_for_#{instance_name}") if primary_default
    end

    def build_store(primary = primary_server.url, secondary = secondary_server.url, **options)
      described_class.new(primary, secondary, instance_name, feature_flags: flags,
                                                             on_error: ->(e, c) { reports << [e, c] }, **options)
    end

    def say(line)
      puts "    [robustness] #{line}"
    end

    describe "fork and threads, Puma/Sidekiq style" do
      it "serves 16 parent threads and 2 forked children of 8 threads each on one shared instance, never mixing replies" do
        dual_write!
        store = build_store
        stop = false
        parent = Array.new(16) do |t|
          Thread.new do
            wrong = []
            round = 0
            wrong.concat(MultiStoreRobustness.own_keys_round(store, "parent-#{t}", round += 1)) until stop
            [wrong, round]
          end
        end
        sleep 0.2 # the parent's threads are busy when the children fork

        children = Array.new(2) do |c|
          reader, writer = IO.pipe
          pid = fork do
            reader.close
            threads = Array.new(8) do |t|
              Thread.new do
                (1..150).flat_map { |round| MultiStoreRobustness.own_keys_round(store, "child-#{c}-#{t}", round) }
              rescue StandardError => e
                [[:raised, e.class, e.message]]
              end
            end
            wrong = threads.flat_map(&:value)
            store.set("written-by-child-#{c}", Process.pid)
            writer.write(Marshal.dump(wrong.first(5).map(&:inspect) + [wrong.size]))
            writer.close
            exit!(wrong.empty? ? 0 : 1)
          rescue Exception # rubocop:disable Lint/RescueException -- never run the parent's at_exit hooks here
            exit!(2)
          end
          writer.close
          [pid, reader]
        end

        results = children.map do |pid, reader|
          deadline = MultiStoreRobustness.monotonic + 30
          status = nil
          until (status = Process.waitpid2(pid, Process::WNOHANG)&.last) || MultiStoreRobustness.monotonic > deadline
            sleep 0.05
          end
          unless status
            Process.kill(:KILL, pid)
            Process.wait(pid)
          end
          report = reader.read
          reader.close
          [status&.exitstatus || :hung, report.empty? ? nil : Marshal.load(report)] # rubocop:disable Security/MarshalLoad
        end
        stop = true
        parent_results = parent.map(&:value)
        say "fork: parent rounds #{parent_results.sum(&:last)}, children #{results.map(&:first).inspect}"

        aggregate_failures do
          expect(results.map(&:first)).to eq([0, 0]), "children: #{results.inspect}"
          expect(results.map { |_, report| report&.last }).to eq([0, 0])
          expect(parent_results.flat_map(&:first).first(5)).to eq([])
          expect(parent_results.map(&:last)).to all(be > 1)
        end
        2.times do |c|
          expect(store.get("written-by-child-#{c}")).to eq(children[c].first.to_s)
          expect(primary_server.client.get("written-by-child-#{c}")).to eq(children[c].first.to_s)
        end
        expect(MultiStoreRobustness.own_keys_round(store, "parent-after-fork", 1)).to eq([])
      end
    end

    describe "bad input, compared with plain redis-rb on the same server" do
      matcher :be_the_same_outcome_as do |expected|
        match { |actual| actual == expected }
        failure_message do |actual|
          "MultiStore differs from redis-rb\n  redis-rb:   #{Outcome.brief(expected)}\n  MultiStore: #{Outcome.brief(actual)}"
        end
      end

      let(:plain) { secondary_server.client(db: PLAIN_DB).tap { |c| clients << c } }

      # Dual-write on: the write also goes to the primary, the caller gets the secondary's reply.
      def multi_store(primary_url = primary_server.url(MULTI_DB))
        dual_write!
        build_store(primary_url, secondary_server.url(MULTI_DB))
      end

      def expect_same_outcome(multi, &block)
        expected = Outcome.capture { block.call(plain) }
        actual = Outcome.capture { block.call(multi) }
        expect(actual).to be_the_same_outcome_as(expected)
        expected
      end

      def self.same_as_redis_rb(description, &block)
        it "#{description}: the same reply or exception as redis-rb" do
          multi = multi_store
          instance_exec(multi, &block)
          expect(multi.ping).to eq("PONG")
          expect(multi.set("still-works", "yes")).to eq("OK")
        end
      end

      same_as_redis_rb("nil keys, values and command names") do |multi|
        expect_same_outcome(multi) { |r| r.set(nil, nil) }
        expect_same_outcome(multi) { |r| r.call([:set, "k", nil]) }
        expect_same_outcome(multi) { |r| r.get(nil) }
        expect_same_outcome(multi) { |r| r.call([nil, "k"]) }
        expect_same_outcome(multi) { |r| r.mget(nil, "k") }
      end

      same_as_redis_rb("wrong types: Object.new, a Hash, nested arrays, symbols, floats, big integers, true") do |multi|
        object = Object.new
        expect_same_outcome(multi) { |r| r.call([:set, object, object]) }
        expect_same_outcome(multi) { |r| r.get(object.to_s) }
        expect_same_outcome(multi) { |r| r.call([:set, "hash", { a: 1, "b" => [2] }]) }
        expect_same_outcome(multi) { |r| r.get("hash") }
        expect_same_outcome(multi) { |r| r.call([:echo, [[1, [2, [3]]]]]) }
        expect_same_outcome(multi) { |r| r.call([:mget, ["hash", ["nested"]], [[]]]) }
        expect_same_outcome(multi) { |r| r.call([:del, [[], []]]) }
        expect_same_outcome(multi) { |r| r.call([:set, :symbol, 1.5e300]) }
        expect_same_outcome(multi) { |r| r.call([:incrby, "n", 2**80]) }
        expect_same_outcome(multi) { |r| r.call([:set, true, false]) }
        expect_same_outcome(multi) { |r| r.expire("hash", "soon") }
        expect_same_outcome(multi) { |r| r.hset("hash", "f", "v") }
        expect_same_outcome(multi) { |r| r.incr("hash") }
      end

      same_as_redis_rb("an argument whose to_s raises, leaving nothing half-sent") do |multi|
        exploding = Object.new
        def exploding.to_s = raise(ArgumentError, "to_s exploded")

        expect_same_outcome(multi) { |r| r.call([:set, "k", exploding]) }
        expect_same_outcome(multi) { |r| r.pipelined { |p| p.set("k", 1); p.call([:set, "k2", exploding]) } }
        # Unlike redis-rb, which has written the pipeline's first command by then, the MultiStore
        # converts every argument before it sends anything.
        expect(multi.mget("k", "k2")).to eq([nil, nil])
      end

      same_as_redis_rb("invalid UTF-8 and NUL bytes in keys and values") do |multi|
        invalid = "\xC3\x28\xFF\xFEkey".dup.force_encoding(Encoding::UTF_8)
        nul = "a\0b\0"
        expect_same_outcome(multi) { |r| r.set(invalid, invalid) }
        expect_same_outcome(multi) { |r| r.get(invalid) }
        expect_same_outcome(multi) { |r| r.set(nul, "#{nul}value") }
        expect_same_outcome(multi) { |r| r.get(nul) }
        expect_same_outcome(multi) { |r| r.hset("h#{nul}", nul, invalid) }
        expect_same_outcome(multi) { |r| r.hgetall("h#{nul}") }
        expect_same_outcome(multi) { |r| r.keys("*").sort }
        expect_same_outcome(multi) { |r| r.call([:echo, "\xFF".b]) }
      end

      same_as_redis_rb("wrong arity and unknown commands") do |multi|
        expect_same_outcome(multi) { |r| r.call([:get]) }
        expect_same_outcome(multi) { |r| r.call([:set, "k"]) }
        expect_same_outcome(multi) { |r| r.call([:set, "k", "v", "EX"]) }
        expect_same_outcome(multi) { |r| r.call([:hset, "h", "f"]) }
        expect_same_outcome(multi) { |r| r.call([:mget]) }
        expect_same_outcome(multi) { |r| r.call(["GeT", "k", "extra"]) }
        expect_same_outcome(multi) { |r| r.call([""]) }
        expect_same_outcome(multi) { |r| r.call([:no_such_command, 1, 2]) }
        expect_same_outcome(multi) { |r| r.call([:config, :no_such_subcommand]) }
        expect_same_outcome(multi) { |r| r.call([:eval, "return 1", "18446744073709551616"]) }
        expect_same_outcome(multi) { |r| r.call([:eval, "return 1", "-1"]) }
        expect_same_outcome(multi) { |r| r.pipelined { |p| p.call([:get]); p.set("k", "v") } }
      end

      it "stores a 100 MB argument and reads its length back, as redis-rb does" do
        multi = multi_store
        big = "x" * (100 * 1024 * 1024)
        rss_before = MultiStoreRobustness.rss_mb

        expect_same_outcome(multi) { |r| r.set("big", big) }
        expect_same_outcome(multi) { |r| r.strlen("big") }
        expect_same_outcome(multi) { |r| r.getrange("big", -3, -1) }
        expect(primary_server.client(db: MULTI_DB).strlen("big")).to eq(big.bytesize)
        say format("100 MB SET: RSS %.0f MB before, %.0f MB after", rss_before, MultiStoreRobustness.rss_mb)
        expect_same_outcome(multi) { |r| r.del("big") }
      ensure
        big = nil
        GC.start
      end

      describe "fuzzing with random argument shapes" do
        def random_scalar(random)
          case random.rand(10)
          when 0 then Array.new(random.rand(0..10)) { (97 + random.rand(26)).chr }.join
          when 1 then random.bytes(random.rand(0..8))
          when 2 then [0, random.rand(10_000..1_000_000), -random.rand(1..1_000_000), 2**random.rand(63..90)].sample(random: random)
          when 3 then [random.rand * 1000 - 500, 0.0, -0.0, 1e20, Float::INFINITY].sample(random: random)
          when 4 then nil
          when 5 then :"sym#{random.rand(100)}"
          when 6 then [true, false].sample(random: random)
          when 7 then "\xC3\x28#{random.rand(100)}".dup.force_encoding(Encoding::UTF_8)
          else FUZZ_WORDS.sample(random: random)
          end
        end

        def random_value(random, depth = 0)
          case random.rand(10)
          when 0, 1 then depth < 2 ? Array.new(random.rand(0..3)) { random_value(random, depth + 1) } : random_scalar(random)
          when 2 then Array.new(random.rand(0..2)) { [random_scalar(random), random_scalar(random)] }.to_h
          else random_scalar(random)
          end
        end

        def random_command(random)
          args = Array.new(random.rand(0..4)) { random_value(random) }
          case random.rand(4)
          when 0 then [:set, *args]
          when 1 then [:echo, *args]
          when 2 then [:mget, *args]
          else [:hset, "h", *args]
          end
        end

        def fuzz(multi, count: 300)
          random = Random.new(FUZZ_SEED)
          shapes = Hash.new(0)
          differences = []
          count.times do |i|
            command = random_command(random)
            expected = Outcome.capture { plain.call(command) }
            actual = Outcome.capture { multi.call(command) }
            shapes[[command.first, expected.first]] += 1
            differences << [i, command, expected, actual] unless actual == expected
          end
          say "fuzz (seed #{FUZZ_SEED}): #{shapes.sort.map { |(c, o), n| "#{c}/#{o}=#{n}" }.join(' ')}"
          differences
        end

        it "gives the outcome redis-rb gives for ~300 random shapes of set, echo, mget and hset" do
          multi = multi_store
          differences = fuzz(multi)

          expect(differences.first(3).map { |d| Outcome.brief(d) }).to eq([])
          expect(multi.ping).to eq("PONG")
        end

        it "gives the same outcomes while the non-default store is down, every write journaled" do
          multi = multi_store("redis://127.0.0.1:#{RedisServers.free_port}/#{MULTI_DB}")
          differences = fuzz(multi)

          expect(differences.first(3).map { |d| Outcome.brief(d) }).to eq([])
          expect(multi.migration_status[:journal_keys]).to be_positive
          expect(multi.ping).to eq("PONG")
        end
      end
    end

    describe "memory" do
      it "stays flat over 1,000,000 commands" do
        dual_write!
        reported = 0
        store = build_store(on_error: ->(_e, _c) { reported += 1 })
        pipeline = lambda do |thread, i|
          store.pipelined do |p|
            p.set("t#{thread}:k#{i % 1000}", i)
            p.get("t#{thread}:k#{i % 1000}")
            p.incr("t#{thread}:counter")
            p.hset("t#{thread}:hash", "f#{i % 100}", i)
            p.expire("t#{thread}:counter", 3600)
          end
        end
        4.times { |t| 2_500.times { |i| pipeline.call(t, i) } } # warm up: pools, buffers, metric label sets
        GC.start
        before = MultiStoreRobustness.rss_mb
        started = MultiStoreRobustness.monotonic

        Array.new(4) { |t| Thread.new { 50_000.times { |i| pipeline.call(t, i) } } }.each(&:join)
        elapsed = MultiStoreRobustness.monotonic - started
        GC.start
        after = MultiStoreRobustness.rss_mb
        say format("1,000,000 commands (200,000 pipelines of 5, 4 threads) in %.1fs (%.0f commands/s): " \
                   "RSS %.1f MB before, %.1f MB after, growth %.1f MB", elapsed, 1_000_000 / elapsed, before, after, after - before)

        expect(reported).to eq(0)
        4.times do |t|
          expect(secondary_server.client.get("t#{t}:counter")).to eq("52500")
          expect(primary_server.client.get("t#{t}:counter")).to eq("52500")
        end
        expect(after - before).to be < 50
      end

      # Each runs in a forked child: a crash there is reported as this example's failure instead
      # of ending the whole suite.
      def in_child(timeout: 60)
        reader, writer = IO.pipe
        stderr_path = File.join(Dir.tmpdir, "multistore-child-#{SecureRandom.hex(4)}.log")
        pid = fork do
          reader.close
          $stderr.reopen(stderr_path, "w")
          writer.sync = true
          yield(->(step) { writer.puts(step) })
          writer.puts("done")
          exit!(0)
        rescue Exception => e # rubocop:disable Lint/RescueException -- reported to the parent
          writer.puts("raised #{e.class}: #{e.message}")
          exit!(1)
        end
        writer.close
        deadline = MultiStoreRobustness.monotonic + timeout
        status = nil
        until (status = Process.waitpid2(pid, Process::WNOHANG)&.last) || MultiStoreRobustness.monotonic > deadline
          sleep 0.05
        end
        unless status
          Process.kill(:KILL, pid)
          _, status = Process.waitpid2(pid)
        end
        steps = reader.read.lines.map(&:chomp)
        reader.close
        crash = File.exist?(stderr_path) ? File.read(stderr_path).lines.first(3).join : ""
        [status, steps, crash]
      ensure
        File.delete(stderr_path) if stderr_path && File.exist?(stderr_path)
      end

      if GC.respond_to?(:compact)
        it "survives GC.compact while threads run commands" do
          dual_write!
          status, steps, crash = in_child do |step|
            store = build_store
            stop = false
            threads = Array.new(6) do |t|
              Thread.new do
                wrong = []
                round = 0
                wrong.concat(MultiStoreRobustness.own_keys_round(store, "gc-#{t}", round += 1)) until stop
                [wrong, round]
              end
            end
            5.times do |i|
              sleep 0.1
              GC.compact
              step.call("compacted #{i + 1}")
            end
            stop = true
            results = threads.map(&:value)
            step.call("rounds #{results.sum(&:last)}, mixed-up replies #{results.flat_map(&:first).first(3).inspect}")
            step.call("after: #{MultiStoreRobustness.own_keys_round(store, 'after-compaction', 1).inspect}")
          end
          say "GC.compact under 6 threads: #{steps.grep(/rounds/).first}"

          expect(status).to be_success, "the child #{status.inspect} after #{steps.inspect}: #{crash}"
          expect(steps).to include(a_string_matching(/mixed-up replies \[\]\z/), "after: []", "done")
        end

        it "keeps working, errors included, after compaction moved every object it could" do
          dual_write!
          status, steps, crash = in_child do |step|
            store = build_store
            strict = build_store(strict: true)
            down = build_store("redis://127.0.0.1:#{RedisServers.free_port}", "redis://127.0.0.1:#{RedisServers.free_port}")
            store.set("before", "compaction")
            GC.verify_compaction_references(double_heap: true, toward: :empty)
            step.call("compacted")
            probes = {
              "a reply" => -> { store.get("before") },
              "a pipeline" => -> { store.pipelined { |p| p.set("k", "v"); p.get("k") } },
              "Redis::CommandError" => -> { store.call([:get]) },
              "an error reply inside a pipeline" => -> { store.pipelined { |p| p.set("s", "v"); p.incr("s") } },
              "a reported MethodMissingError" => -> { store.call([:no_such_command]) },
              "a raised MethodMissingError" => -> { strict.call([:no_such_command]) },
              "Redis::CannotConnectError" => -> { down.get("k") },
              "the flags and the reporter" => -> { store.set("after", "compaction") && reports.size }
            }
            probes.each do |name, probe|
              step.call("#{name}: #{begin
                probe.call.inspect
              rescue StandardError => e
                "#{e.class}: #{e.message}"
              end}")
            end
          end
          say "after GC.verify_compaction_references: #{status.inspect}, #{steps.size - 1} of 9 steps"

          expect(status).to be_success, "the child #{status.inspect} after #{steps.inspect}: #{crash}"
          # Each step reads "<probe>: <what it returned or raised>".
          expect(steps).to include("a reply: \"compaction\"",
                                   a_string_matching(/\ARedis::CommandError: Redis::CommandError: ERR wrong number/),
                                   a_string_matching(/\Aa raised MethodMissingError: Gitlab::Redis::MultiStore::MethodMissingError/),
                                   a_string_matching(/\ARedis::CannotConnectError: Redis::CannotConnectError: Error connecting/),
                                   "done")
        end
      end
    end

    describe "secrets" do
      let(:password) { "pw-#{SecureRandom.hex(8)}" }
      let(:other_password) { "other-pw-#{SecureRandom.hex(8)}" }
      let(:log) { StringIO.new }

      around do |example|
        previous_logger = described_class.logger
        previous_level = described_class.log_level
        described_class.logger = Logger.new(log)
        described_class.log_level = :debug
        example.run
      ensure
        described_class.flush_logs
        described_class.logger = previous_logger
        described_class.log_level = previous_level || :warn
      end

      it "never shows a password in inspect, reports, logs, metrics or raised exceptions" do
        server = dedicated_redis_server("--requirepass", password)
        closed_port = RedisServers.free_port
        failing_url = "redis://:#{other_password}@127.0.0.1:#{closed_port}/0"
        store = build_store(failing_url, "redis://:#{password}@127.0.0.1:#{server.port}/0", breaker_cool_down: 0.2)
        seen = []

        # Dual-write with the failing store as the non-default one: reported, not raised.
        dual_write!
        20.times do |i|
          expect(store.set("k#{i}", i)).to eq("OK")
          expect(store.get("k#{i}")).to eq(i.to_s)
          expect(store.pipelined { |p| p.incr("c"); p.get("k#{i}") }).to eq([i + 1, i.to_s])
        end
        sleep 0.3 # the re-sync thread tries (and fails) the closed port
        # The failing store as the default one: raised to the caller.
        flags.enable(:"use_primary_store_as_default_for_#{instance_name}")
        [-> { store.set("k", 1) }, -> { store.get("k") }, -> { store.pipelined { |p| p.incr("c") } },
         -> { store.backfill }, -> { store.verify }].each do |call|
          call.call
        rescue StandardError => e
          seen << e.class << e.message << e.inspect << e.full_message
        end
        # A wrong password is refused without being echoed.
        wrong = described_class.new("redis://:#{other_password}@127.0.0.1:#{server.port}/0",
                                    "redis://:#{other_password}@127.0.0.1:#{server.port}/1", "#{instance_name}_wrong")
        begin
          wrong.get("k")
        rescue StandardError => e
          seen << e.class << e.message << e.inspect
        end
        described_class.flush_logs
        reported = reports.size.times.map { reports.pop }
        status = store.migration_status

        texts = {
          "inspect" => store.inspect, "to_s" => store.to_s, "interpolated" => "#{store}", "pp" => store.pretty_inspect,
          "id" => store.id.to_s, "connection" => store.connection.inspect, "migration_status" => status.inspect,
          "on_error exceptions" => reported.map { |e, _| "#{e.class} #{e.message} #{e.inspect}" }.join("\n"),
          "on_error contexts" => reported.map { |_, c| c.inspect }.join("\n"),
          "logs" => log.string, "metrics" => described_class.metrics_text,
          "raised exceptions" => seen.map(&:to_s).join("\n"), "wrong password store" => wrong.inspect
        }
        say "secrets: #{reported.size} reports, #{log.string.lines.size} log lines, #{seen.size / 4} raised exceptions checked"

        aggregate_failures do
          expect(reported).not_to be_empty
          expect(log.string).not_to be_empty
          expect(seen).to include(Redis::CannotConnectError)
          texts.each do |where, text|
            expect(text).not_to include(password), "the password appears in #{where}"
            expect(text).not_to include(other_password), "the failing store's password appears in #{where}"
          end
        end
      end
    end
  end
end
