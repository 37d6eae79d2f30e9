# frozen_string_literal: true

require "securerandom"
require "set"

# Faults of real redis-servers under real multi-threaded traffic, and the MultiStore healing
# itself afterwards: a store down, killed, hanging past its read timeout (SIGSTOP), restarted
# empty or resetting its connections, in each flag state that matters -- the failing store as
# the non-default one (its failures must never reach callers) and as the default one (callers
# get exactly what redis-rb would raise). The failing store always runs on a dedicated server
# with short timeouts, so that a fault resolves in a fraction of a second.
module MultiStoreFaults
  FAULT_SECONDS = 0.6 # longer than the stores' 0.3 s read timeout
  TIMEOUT = 0.3
  COOL_DOWN = 0.5

  # What redis-rb 4.8 raises when a server is down, hangs or drops the connection.
  CONNECTION_ERRORS = [Redis::CannotConnectError, Redis::ConnectionError, Redis::TimeoutError].freeze
  CONNECTION_MESSAGES = Regexp.union(
    /\AError connecting to Redis on 127\.0\.0\.1:\d+ \((Errno::E[A-Z]+|Redis::TimeoutError)\)\z/,
    /\AConnection lost \(E[A-Z]+\)\z/,
    /\AConnection timed out\z/
  )

  # How each fault is brought about on the failing store's dedicated server, and healed.
  FAULTS = {
    down_from_the_start: {
      before: ->(server) { server.stop },
      inject: ->(_server) {},
      heal: ->(server) { server.start(port: server.port) }
    },
    killed_mid_run: {
      inject: ->(server) { server.stop },
      heal: ->(server) { server.start(port: server.port) }
    },
    hanging_past_the_read_timeout: {
      inject: ->(server) { Process.kill(:STOP, server.pid) },
      heal: ->(server) { Process.kill(:CONT, server.pid) }
    },
    restarted_empty: {
      inject: ->(server) { server.restart },
      heal: ->(_server) {}
    },
    resetting_connections: {
      # "Connection reset by peer", again and again: CLIENT KILL of every normal client.
      during: lambda do |server|
        killer = server.client
        4.times do
          killer.call(%w[client kill type normal])
          sleep FAULT_SECONDS / 4
        end
      ensure
        killer&.close
      end,
      inject: ->(_server) {},
      heal: ->(_server) {}
    }
  }.freeze

  def self.monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def self.rss_mb
    File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i / 1024.0
  end

  # Mixed traffic from many threads sharing one MultiStore. Each thread writes only its own keys
  # (SET with increasing values, INCR, HSET, a writing pipeline) and reads each one back right
  # away, plus one cache miss per round. Every write is booked: after a success the key holds
  # exactly what was written; after an error it holds the old value or the new one. A read that
  # does not return the value this thread just wrote is a stale read.
  class Traffic
    Failure = Struct.new(:error_class, :message, :phase, :operation)

    attr_accessor :phase
    attr_reader :failures, :stale_reads, :operations

    def initialize(store, threads:, prefix:)
      @store = store
      @thread_count = threads
      @prefix = prefix
      @phase = :before
    end

    def start
      @stop = false
      @threads = Array.new(@thread_count) { |t| Thread.new { run(t) } }
      self
    end

    def stop
      @stop = true
      ledgers = @threads.map(&:value)
      @failures = ledgers.flat_map { |l| l[:failures] }
      @stale_reads = ledgers.flat_map { |l| l[:stale] }
      @operations = ledgers.sum { |l| l[:operations] }
      @cells = ledgers.map { |l| l[:cells] }.reduce({}, :merge)
      @touched = ledgers.map { |l| l[:touched] }.reduce(Hash.new { |h, k| h[k] = Set.new }) do |all, touched|
        touched.each { |phase, keys| all[phase].merge(keys) }
        all
      end
      self
    end

    # Writes a caller saw succeed that the store does not hold: [key, field, acceptable, actual].
    def lost_on(client)
      @cells.filter_map do |(key, field), acceptable|
        actual = field ? client.hget(key, field) : client.get(key)
        [key, field, acceptable, actual] unless acceptable.include?(actual)
      end
    end

    def keys_touched(*phases)
      phases.flat_map { |phase| @touched[phase].to_a }.uniq
    end

    private

    def run(thread)
      ledger = { failures: [], stale: [], operations: 0, cells: {}, touched: Hash.new { |h, k| h[k] = Set.new } }
      round = 0
      until @stop
        round += 1
        step(thread, round, ledger)
      end
      ledger
    end

    def step(thread, round, ledger)
      base = "#{@prefix}:#{thread}"
      value = "#{thread}-#{round}"
      case round % 5
      when 0
        key = "#{base}:string:#{round % 8}"
        wrote = write(ledger, :set, [[key, nil, value]]) { @store.set(key, value) }
        read(ledger, :get, value) { @store.get(key) } if wrote
      when 1
        key = "#{base}:counter"
        now = ledger[:cells][[key, nil]] || [nil]
        reply = write(ledger, :incr, [[key, nil, ->(r) { r.to_s }, now.map { |v| (v.to_i + 1).to_s }]]) { @store.incr(key) }
        read(ledger, :get, reply.to_s) { @store.get(key) } if reply
      when 2
        key = "#{base}:hash"
        field = "f#{round % 4}"
        wrote = write(ledger, :hset, [[key, field, value]]) { @store.hset(key, field, value) }
        read(ledger, :hget, value) { @store.hget(key, field) } if wrote
      when 3
        key = "#{base}:piped:#{round % 4}"
        counter = "#{base}:piped-counter"
        now = ledger[:cells][[counter, nil]] || [nil]
        replies = write(ledger, :pipelined, [[key, nil, value], [counter, nil, ->(r) { r[1].to_s }, now.map { |v| (v.to_i + 1).to_s }]]) do
          @store.pipelined do |pipeline|
            pipeline.set(key, value)
            pipeline.incr(counter)
            pipeline.expire(counter, 3600)
          end
        end
        read(ledger, :get, value) { @store.get(key) } if replies
      else
        read(ledger, :miss, nil) { @store.get("#{@prefix}:never-written:#{thread}") }
      end
    end

    # Books the cells a write sets. Each cell is [key, field, value] or, for values only the
    # reply tells (INCR), [key, field, ->(reply) { value }, possible values if it fails].
    def write(ledger, operation, cells)
      ledger[:operations] += 1
      reply = yield
      cells.each do |key, field, value, _|
        ledger[:cells][[key, field]] = [value.respond_to?(:call) ? value.call(reply) : value]
        ledger[:touched][@phase] << key
      end
      reply || true
    rescue StandardError => e
      ledger[:failures] << Failure.new(e.class, e.message, @phase, operation)
      cells.each do |key, field, value, if_failed|
        possible = if_failed || [value]
        ledger[:cells][[key, field]] = ((ledger[:cells][[key, field]] || [nil]) + possible).uniq
        ledger[:touched][@phase] << key
      end
      nil
    end

    def read(ledger, operation, expected)
      ledger[:operations] += 1
      actual = yield
      ledger[:stale] << [operation, expected, actual, @phase] unless actual == expected
    rescue StandardError => e
      ledger[:failures] << Failure.new(e.class, e.message, @phase, operation)
    end
  end

  RSpec.describe Gitlab::Redis::MultiStore, "faults and self-healing" do
    let(:flags) { MultiStoreHelpers::FlagSource.new }
    let(:instance_name) { "faults_#{SecureRandom.hex(4)}" }
    let(:reports) { Queue.new }
    let(:clients) { [] }

    after { clients.each(&:close) }

    def store_options(server, timeout: TIMEOUT)
      { url: server.url, timeout: timeout, reconnect_attempts: 0 }
    end

    def build_store(primary, secondary, default:, **options)
      flags.enable(:"use_primary_and_secondary_stores_for_#{instance_name}")
      flags.enable(:"use_primary_store_as_default_for_#{instance_name}") if default == :primary
      described_class.new(primary, secondary, instance_name, feature_flags: flags,
                                                             on_error: ->(e, c) { reports << [e, c] },
                                                             breaker_cool_down: COOL_DOWN, **options)
    end

    def monotonic = MultiStoreFaults.monotonic

    def say(line)
      puts "    [faults] #{line}"
    end

    def resume(server)
      Process.kill(:CONT, server.pid) if server.pid
    rescue Errno::ESRCH
      nil
    end

    # Polls until the block is truthy; the seconds it took, or nil past the deadline.
    def seconds_until(deadline: 10)
      started = monotonic
      loop do
        return monotonic - started if yield
        return nil if monotonic - started > deadline

        sleep 0.01
      end
    end

    # Time until a dual write through the MultiStore is found on the (restarted) server: the
    # first write the store received again.
    def time_to_recover(store, server, key, deadline: 5)
      direct = Redis.new(url: server.url, timeout: TIMEOUT, reconnect_attempts: 0)
      attempt = 0
      seconds_until(deadline: deadline) do
        attempt += 1
        begin
          store.set(key, attempt)
          direct.get(key) == attempt.to_s
        rescue Redis::BaseError
          false
        end
      end
    ensure
      direct&.close
    end

    def journal_drained?(store)
      store.migration_status[:journal_keys].zero?
    end


    # Runs 16 threads of traffic, breaks `failing` (:primary or :secondary, on a dedicated
    # server) with the fault, heals it and measures the recovery.
    def run_fault(fault_name, failing:, default:, threads: 16)
      fault = FAULTS.fetch(fault_name)
      server = dedicated_redis_server
      healthy = failing == :primary ? secondary_server : primary_server
      stores = { failing => store_options(server), (failing == :primary ? :secondary : :primary) => store_options(healthy) }
      fault[:before]&.call(server)
      store = build_store(stores[:primary], stores[:secondary], default: default)
      traffic = Traffic.new(store, threads: threads, prefix: "t")
      traffic.phase = :fault if fault[:before]
      traffic.start
      rss_peak = MultiStoreFaults.rss_mb
      begin
        sleep 0.15 unless fault[:before]
        traffic.phase = :fault
        fault[:inject].call(server)
        if fault[:during]
          fault[:during].call(server)
        else
          sleep FAULT_SECONDS
        end
        rss_peak = [rss_peak, MultiStoreFaults.rss_mb].max
        fault[:heal].call(server)
      ensure
        resume(server)
      end
      recovery = time_to_recover(store, server, "recovery-probe")
      traffic.phase = :after
      sleep 0.15
      traffic.stop
      { store: store, server: server, healthy: healthy, traffic: traffic, recovery: recovery, rss_peak: rss_peak }
    end

    def default_client(run, default:, failing:)
      client = (default == failing ? run[:server] : run[:healthy]).client
      clients << client
      client
    end

    def summarize(title, run, lost)
      traffic = run[:traffic]
      say format("%-62s ops=%-6d caller errors=%-4d stale reads=%d writes lost=%d time to recover=%s RSS=%.1f MB",
                 title, traffic.operations, traffic.failures.size, traffic.stale_reads.size, lost.size,
                 run[:recovery] ? format("%.3fs", run[:recovery]) : "never", run[:rss_peak])
    end

    describe "a failing non-default store: callers see nothing" do
      [
        [:primary, :secondary, :down_from_the_start],
        [:primary, :secondary, :killed_mid_run],
        [:primary, :secondary, :hanging_past_the_read_timeout],
        [:primary, :secondary, :restarted_empty],
        [:primary, :secondary, :resetting_connections],
        [:secondary, :primary, :killed_mid_run],
        [:secondary, :primary, :hanging_past_the_read_timeout],
        [:secondary, :primary, :restarted_empty],
        [:secondary, :primary, :resetting_connections]
      ].each do |failing, default, fault|
        it "#{failing} #{fault.to_s.tr('_', ' ')} while the #{default} is the default: " \
           "no caller error, no stale read, no write lost, writes reach it again" do
          run = run_fault(fault, failing: failing, default: default)
          lost = run[:traffic].lost_on(default_client(run, default: default, failing: failing))
          summarize("#{failing} #{fault} (#{default} default)", run, lost)

          aggregate_failures do
            expect(run[:traffic].failures.map(&:to_a).tally).to eq({})
            expect(run[:traffic].stale_reads.first(5)).to eq([])
            expect(lost.first(5)).to eq([])
            expect(run[:recovery]).not_to be_nil, "no dual write reached the #{failing} store within 5 s after the fault"
            expect(reports.size).to be_positive, "the fault was reported through on_error"
          end
        end
      end
    end

    describe "a failing non-default store: reads" do
      it "answers a read that misses on the default primary without raising while the non-default secondary is down" do
        server = dedicated_redis_server
        store = build_store(store_options(primary_server), store_options(server), default: :primary)
        store.set("present", "v")
        server.stop
        outcomes = [-> { store.get("never-written") },
                    -> { store.pipelined { |p| p.get("never-written"); p.get("present") } },
                    -> { store.get("present") }].map do |call|
          call.call
        rescue StandardError => e
          [e.class, e.message]
        end

        expect(outcomes).to eq([nil, [nil, "v"], "v"])
      end
    end

    describe "a failing default store: callers get redis-rb's exceptions" do
      [
        [:primary, :hanging_past_the_read_timeout],
        [:primary, :resetting_connections],
        [:secondary, :down_from_the_start],
        [:secondary, :hanging_past_the_read_timeout]
      ].each do |failing, fault|
        it "#{failing} #{fault.to_s.tr('_', ' ')} while it is the default: redis-rb's connection errors, " \
           "no acknowledged write lost" do
          run = run_fault(fault, failing: failing, default: failing)
          lost = run[:traffic].lost_on(default_client(run, default: failing, failing: failing))
          summarize("#{failing} #{fault} (#{failing} default)", run, lost)
          failures = run[:traffic].failures

          aggregate_failures do
            expect(failures).not_to be_empty, "callers must see the default store fail"
            expect(failures.map(&:error_class).uniq).to all(satisfy { |c| CONNECTION_ERRORS.include?(c) })
            expect(failures.map(&:message).uniq).to all(match(CONNECTION_MESSAGES))
            expect(failures.map(&:phase)).not_to include(:before), "no error before the fault"
            expect(run[:traffic].stale_reads.first(5)).to eq([])
            expect(lost.first(5)).to eq([])
            expect(run[:recovery]).not_to be_nil
          end
        end
      end

      it "raises exactly what redis-rb raises for a default store that is down" do
        server = dedicated_redis_server
        server.stop
        store = build_store(store_options(primary_server), store_options(server), default: :secondary)
        plain = Redis.new(**store_options(server))
        outcome = lambda do |call|
          call.call
        rescue StandardError => e
          [e.class, e.message]
        end

        aggregate_failures do
          expect(outcome[-> { store.set("k", 1) }]).to eq(outcome[-> { plain.set("k", 1) }])
          expect(outcome[-> { store.get("never-written") }]).to eq(outcome[-> { plain.get("never-written") }])
          expect(outcome[-> { store.pipelined { |p| p.incr("c") } }]).to eq(outcome[-> { plain.pipelined { |p| p.incr("c") } }])
          expect(outcome[-> { plain.set("k", 1) }]).to match([Redis::CannotConnectError, /ECONNREFUSED/])
        end
      end

      it "does not leave the other store holding a write the failing default store never got" do
        server = dedicated_redis_server
        server.stop
        store = build_store(store_options(primary_server), store_options(server), default: :secondary)
        expect { store.incr("counter") }.to raise_error(Redis::CannotConnectError)
        server.start(port: server.port)

        expect(store.incr("counter")).to eq(1)
        converged = seconds_until(deadline: 2) { contents(primary_server.client, "counter") == contents(server.client, "counter") }

        aggregate_failures do
          expect(store.get("counter")).to eq("1") # what INCR just answered from the default store
          expect(converged).not_to be_nil,
                                   "the stores still differ: primary #{contents(primary_server.client, 'counter')}, " \
                                   "secondary (default) #{contents(server.client, 'counter')}, " \
                                   "journal #{store.migration_status[:journal_keys]} keys"
        end
      end

      it "hides a reset of the default store's idle connections the way redis-rb does, with its default reconnect_attempts" do
        server = dedicated_redis_server
        store = build_store({ url: primary_server.url }, { url: server.url }, default: :secondary)
        20.times { |i| store.set("warm-#{i}", i) }
        killer = server.client
        errors = []

        5.times do |round|
          killer.call(%w[client kill type normal])
          # Idle for more than a millisecond: looked at before use. (One closed within a
          # millisecond of its last use makes a write raise rather than risk running it twice.)
          sleep 0.01
          begin
            store.set("after-reset", round)
            store.pipelined { |p| p.incr("c") }
            errors << [round, store.get("after-reset")] unless store.get("after-reset") == round.to_s
          rescue StandardError => e
            errors << [round, e.class, e.message]
          end
        end
        killer.close

        expect(errors).to eq([])
      end
    end

    describe "the circuit breaker" do
      [%i[primary secondary], %i[secondary primary]].each do |hanging, default|
        it "stops waiting on a hanging non-default #{hanging} once it opens, then probes and closes after the cool-down " \
           "(#{default} default)" do
          server = dedicated_redis_server
          others = hanging == :primary ? secondary_server : primary_server
          stores = { hanging => store_options(server), (hanging == :primary ? :secondary : :primary) => store_options(others) }
          store = build_store(stores[:primary], stores[:secondary], default: default)
          store.set("warm", 1)
          calls = 60
          elapsed = nil
          opened = metric_delta("gitlab_redis_multi_store_breaker_opened_total", instance_name: instance_name, store: hanging) do
            Process.kill(:STOP, server.pid)
            started = monotonic
            (calls / 2).times do |i|
              store.set("k#{i}", i)
              expect(store.get("k#{i}")).to eq(i.to_s)
            end
            elapsed = monotonic - started
            expect(store.migration_status[:breaker][hanging]).to eq(:open)
          ensure
            resume(server)
          end
          say format("breaker (%s hanging, %s default): %d calls in %.2fs (%.2fs if each waited the timeout)",
                     hanging, default, calls, elapsed, calls * TIMEOUT)

          expect(opened).to eq(1)
          expect(elapsed).to be < calls * TIMEOUT / 4

          healed = seconds_until(deadline: 5) do
            store.set("after-cool-down", "v")
            server.client.get("after-cool-down") == "v" && store.migration_status[:breaker][hanging] == :closed
          end
          expect(healed).not_to be_nil, "writes reach the #{hanging} store again and its breaker closes after the cool-down"
          expect(store.migration_status[:breaker][hanging]).to eq(:closed)
          store.set("closed", "yes")
          expect(server.client.get("closed")).to eq("yes")
        end
      end

      it "probes again, for another cool-down, while the store still hangs" do
        server = dedicated_redis_server
        store = build_store(store_options(server), store_options(secondary_server), default: :secondary)
        store.set("warm", 1)
        Process.kill(:STOP, server.pid)
        begin
          4.times { |i| store.set("k#{i}", i) }
          expect(store.migration_status[:breaker][:primary]).to eq(:open)
          sleep COOL_DOWN + 0.1
          started = monotonic
          10.times { |i| store.set("again#{i}", i) } # one probe, then skipped again
          expect(monotonic - started).to be < 10 * TIMEOUT / 2
          sleep TIMEOUT + 0.05 # a probe of the re-sync thread, if it took the probe, has failed by now
          expect(store.migration_status[:breaker][:primary]).not_to eq(:closed)
        ensure
          resume(server)
        end
      end

      it "does not wait on a hanging non-default secondary for reads that miss on the default primary" do
        server = dedicated_redis_server
        store = build_store(store_options(primary_server), store_options(server), default: :primary)
        store.set("warm", 1)
        errors = []
        elapsed = nil
        Process.kill(:STOP, server.pid)
        begin
          4.times { |i| store.set("k#{i}", i) } # opens the secondary's breaker
          expect(store.migration_status[:breaker][:secondary]).to eq(:open)
          started = monotonic
          5.times do |i|
            store.get("never-written-#{i}")
          rescue StandardError => e
            errors << [e.class, e.message]
          end
          elapsed = monotonic - started
        ensure
          resume(server)
        end

        aggregate_failures do
          expect(errors.tally).to eq({})
          expect(elapsed).to be < 5 * TIMEOUT / 2
        end
      end

      # Until a verify says the stores agree, a write that changes a key in place (HSET, INCR)
      # first asks both stores whether they have its keys. A hung store that did not answer that
      # look used to be sent the write as well, so the caller waited out its timeout twice -- and
      # on a hang shorter than that, the late write went through with no failure counted, no
      # journal entry and the breaker left closed.
      it "waits out a hanging non-default secondary once per in-place write, counts the write as failed there " \
         "and re-syncs it" do
        timeout = 0.8
        server = dedicated_redis_server
        store = build_store(store_options(primary_server), store_options(server, timeout: timeout), default: :primary)
        store.hset("in-place", "warm", "1")
        waited = nil
        Process.kill(:STOP, server.pid)
        begin
          started = monotonic
          expect(store.hset("in-place", "f0", "0")).to eq(1)
          waited = monotonic - started
          expect(store.incr("counter")).to eq(1)
        ensure
          resume(server)
        end
        drained = seconds_until(deadline: 10) { journal_drained?(store) }

        aggregate_failures do
          expect(waited).to be < 1.6 * timeout, "the write waited #{waited.round(2)}s on a store with a #{timeout}s timeout"
          error, context = reports.pop(true)
          expect([error.class, context[:message]]).to eq([Redis::TimeoutError, "Failed to write to secondary store"])
          expect(drained).not_to be_nil, "the journal drained: #{store.migration_status.slice(:journal_keys, :breaker)}"
          expect(primary_server.client.hgetall("in-place")).to eq("warm" => "1", "f0" => "0")
          expect(server.client.hgetall("in-place")).to eq("warm" => "1", "f0" => "0")
          expect([primary_server.client.get("counter"), server.client.get("counter")]).to eq(%w[1 1])
        end
      end

      it "fails an in-place write on a hanging default primary after one timeout, having sent it to neither store" do
        timeout = 0.8
        server = dedicated_redis_server
        store = build_store(store_options(server, timeout: timeout), store_options(secondary_server), default: :primary)
        store.hset("in-place-default", "warm", "1")
        raised = nil
        waited = nil
        Process.kill(:STOP, server.pid)
        begin
          started = monotonic
          begin
            store.hset("in-place-default", "f0", "0")
          rescue StandardError => e
            raised = e
          end
          waited = monotonic - started
        ensure
          resume(server)
        end

        aggregate_failures do
          expect(raised).to be_a(Redis::TimeoutError)
          expect(waited).to be < 1.6 * timeout, "the write waited #{waited.round(2)}s on a store with a #{timeout}s timeout"
          expect(server.client.hgetall("in-place-default")).to eq("warm" => "1")
          expect(secondary_server.client.hgetall("in-place-default")).to eq("warm" => "1")
          expect(store.hgetall("in-place-default")).to eq("warm" => "1")
        end
      end

      it "writes to the non-default store again within a few cool-downs after its connections were reset, " \
         "not one cool-down per dead pooled connection" do
        server = dedicated_redis_server
        store = build_store(store_options(server), store_options(secondary_server), default: :secondary)
        Array.new(16) { |t| Thread.new { 20.times { |i| store.set("warm-#{t}", i) } } }.each(&:join)
        killer = server.client
        killed = killer.call(%w[client kill type normal])
        killer.close

        recovered = time_to_recover(store, server, "after-reset", deadline: 6 * COOL_DOWN)
        say "connections reset (#{killed} killed): writes reach the primary again after " \
            "#{recovered ? format('%.3fs', recovered) : "more than #{6 * COOL_DOWN}s"} (cool-down #{COOL_DOWN}s)"

        expect(killed).to be > 3
        expect(recovered).not_to be_nil,
                                 "no write reached the primary within #{6 * COOL_DOWN}s: #{store.migration_status.slice(:breaker, :journal_keys)}"
      end

      it "closes again when the first call after the cool-down is a read-only pipeline" do
        server = dedicated_redis_server
        store = build_store(store_options(server), store_options(secondary_server), default: :secondary)
        store.get("warm")
        Process.kill(:STOP, server.pid)
        begin
          3.times { |i| expect(store.get("hang-#{i}")).to be_nil } # reads try the primary first
          expect(store.migration_status[:breaker][:primary]).to eq(:open)
        ensure
          resume(server)
        end
        sleep COOL_DOWN + 0.1

        expect(store.pipelined { |p| p.get("a"); p.get("b") }).to eq([nil, nil])
        healed = seconds_until(deadline: 3) do
          store.set("after", "v")
          server.client.get("after") == "v"
        end

        aggregate_failures do
          expect(healed).not_to be_nil, "writes never reached the primary again: breaker #{store.migration_status[:breaker][:primary]}, " \
                                        "journal #{store.migration_status[:journal_keys]} keys"
          expect(store.migration_status[:breaker][:primary]).to eq(:closed)
        end
      end
    end

    describe "self-healing: journal and re-sync" do
      def run_healing(fault_name, failing:, default:)
        server = dedicated_redis_server
        healthy = failing == :primary ? secondary_server : primary_server
        stores = { failing => store_options(server), (failing == :primary ? :secondary : :primary) => store_options(healthy) }
        store = build_store(stores[:primary], stores[:secondary], default: default)
        traffic = Traffic.new(store, threads: 8, prefix: "heal").start
        rss_peak = MultiStoreFaults.rss_mb
        resets_before = metric_value("gitlab_redis_multi_store_store_reset_total", instance_name: instance_name, store: failing)
        sleep 0.15
        traffic.phase = :fault
        begin
          if fault_name == :hang
            Process.kill(:STOP, server.pid)
            sleep FAULT_SECONDS
            rss_peak = [rss_peak, MultiStoreFaults.rss_mb].max
            Process.kill(:CONT, server.pid)
          else
            server.stop
            sleep FAULT_SECONDS
            rss_peak = [rss_peak, MultiStoreFaults.rss_mb].max
            server.start(port: server.port)
          end
        ensure
          resume(server)
        end
        resynced = seconds_until(deadline: 10) { journal_drained?(store) && store.migration_status[:breaker][failing] == :closed }
        traffic.phase = :after
        sleep 0.1
        traffic.stop
        seconds_until(deadline: 10) { journal_drained?(store) }
        status = store.migration_status
        say format("%-44s ops=%-6d caller errors=%d stale reads=%d time to re-sync=%s journal peak=%d RSS at peak=%.1f MB",
                   "#{failing} #{fault_name} (#{default} default)", traffic.operations, traffic.failures.size,
                   traffic.stale_reads.size, resynced ? format("%.3fs", resynced) : "never", status[:journal_peak], rss_peak)
        { store: store, server: server, healthy: healthy, traffic: traffic, resynced: resynced, status: status,
          resets_before: resets_before }
      end

      def different_keys(run)
        left = run[:server].client
        right = run[:healthy].client
        clients.push(left, right)
        run[:traffic].keys_touched(:fault, :after).reject { |key| contents(left, key) == contents(right, key) }
                     .first(5).map { |key| [key, contents(left, key), contents(right, key)] }
      end

      [%i[primary secondary], %i[secondary primary]].each do |failing, default|
        it "rides out a hanging #{failing} (#{default} default): no caller error, no stale read, then both stores equal" do
          run = run_healing(:hang, failing: failing, default: default)

          aggregate_failures do
            expect(run[:traffic].failures.map(&:to_a).tally).to eq({})
            expect(run[:traffic].stale_reads.first(5)).to eq([])
            expect(run[:resynced]).not_to be_nil, "the journal drained after the fault: #{run[:status].inspect}"
            expect(run[:status][:journal_peak]).to be_positive
            expect(different_keys(run)).to eq([])
          end
        end

        it "rides out a #{failing} killed and restarted empty (#{default} default): no caller error, no stale read, " \
           "re-synced, the restart counted and a backfill asked for" do
          run = run_healing(:kill_then_restart, failing: failing, default: default)
          resets = metric_value("gitlab_redis_multi_store_store_reset_total", instance_name: instance_name, store: failing)

          aggregate_failures do
            expect(run[:traffic].failures.map(&:to_a).tally).to eq({})
            expect(run[:traffic].stale_reads.first(5)).to eq([])
            expect(run[:resynced]).not_to be_nil, "the journal drained after the fault: #{run[:status].inspect}"
            expect(different_keys(run)).to eq([])
            expect(resets - run[:resets_before]).to be >= 1
            expect(run[:status][:store_resets][failing]).to be >= 1
            expect(run[:status][:backfill_needed]).to be(true)
            expect(run[:status][:reasons]).to include(a_string_matching(/restarted since the last full backfill/))
          end

          # Before the switch a backfill copies what the restart lost; after it, a repair from the
          # default store does (a backfill would bring back keys deleted since).
          if default == :primary
            expect { run[:store].backfill }.to raise_error(Gitlab::Redis::MultiStore::BackfillAfterSwitchError)
            expect(run[:store].verify(repair: true)).to be_in_agreement
          else
            expect(run[:store].backfill).to be_ok
          end
          expect(run[:store].migration_status[:backfill_needed]).to be(false)
        end
      end

      it "does not settle a journaled key while a dual write to it is still on its way to the default store" do
        primary = dedicated_redis_server
        secondary = dedicated_redis_server
        store = build_store({ url: primary.url }, { url: secondary.url }, default: :secondary)
        on_primary = primary.client
        on_secondary = secondary.client
        clients.push(on_primary, on_secondary)
        # Journal "counter" (the primary lags) and hold the re-sync back: the primary refuses
        # RESTORE until told otherwise, so the key stays journaled.
        on_primary.call(%w[acl setuser default -restore])
        on_primary.set("counter", 100)
        store.pipelined { |p| p.incr("counter") } # the stores answer 101 and 1: journaled
        expect(store.migration_status[:journal_keys]).to eq(1)

        # A dual write: applied on the primary at once, held on the default store (writes paused)...
        on_secondary.call(%w[client pause 1000 write])
        writer = Thread.new { store.incr("counter") }
        expect(seconds_until(deadline: 1) { on_primary.get("counter") == "102" }).not_to be_nil
        # ...while the re-sync copies the key from the default store and compares both.
        on_primary.call(%w[acl setuser default +restore])

        expect(writer.value).to eq(2)
        converged = seconds_until(deadline: 2) { contents(on_primary, "counter") == contents(on_secondary, "counter") }
        aggregate_failures do
          expect(store.get("counter")).to eq("2") # what INCR just answered
          expect(converged).not_to be_nil,
                                   "the stores differ for good: primary #{on_primary.get('counter')}, secondary " \
                                   "#{on_secondary.get('counter')}, journal #{store.migration_status[:journal_keys]} keys"
        end
      end

      it "records what it cannot journal past journal_capacity and asks for a full verify" do
        server = dedicated_redis_server
        server.stop
        store = build_store(store_options(server), store_options(secondary_server), default: :secondary, journal_capacity: 10)

        overflow = metric_delta("gitlab_redis_multi_store_journal_overflow_total", instance_name: instance_name) do
          25.times { |i| store.set("key-#{i}", i) }
          store.set("key-0", "again") # already journaled: no new overflow
        end
        status = store.migration_status

        aggregate_failures do
          expect(status[:journal_keys]).to eq(10)
          expect(status[:journal_overflows]).to eq(15)
          expect(overflow).to eq(15)
          expect(status[:full_verify_needed]).to be(true)
          expect(status[:safe_to_switch]).to be(false)
          expect(status[:reasons]).to include(a_string_matching(/could not be journaled since the last full verify: run verify with repair/))
        end

        server.start(port: server.port)
        expect(seconds_until(deadline: 10) { journal_drained?(store) }).not_to be_nil
        expect(store.verify(repair: true)).to be_in_agreement
        expect(store.migration_status[:full_verify_needed]).to be(false)
        expect(25.times.map { |i| server.client.get("key-#{i}") }).to eq(["again", *(1..24).map(&:to_s)])
      end

      describe "migration_status[:safe_to_switch]" do
        it "says no, with the reasons, while the breaker is open, keys wait for re-sync and nothing was verified; " \
           "yes once healed and verified" do
          server = dedicated_redis_server
          store = build_store(store_options(server), store_options(secondary_server), default: :secondary)
          store.set("before", 1)
          expect(store.migration_status).to include(safe_to_switch: false, reasons: ["no full verify has run"])

          Process.kill(:STOP, server.pid)
          begin
            # Reads try the primary first: their timeouts open the breaker, no write fails.
            3.times { |i| store.get("read-#{i}") }
            10.times { |i| store.set("during-#{i}", i) } # skipped by the open breaker, journaled
            status = store.migration_status
            aggregate_failures do
              expect(status[:safe_to_switch]).to be(false)
              expect(status[:breaker][:primary]).to eq(:open)
              expect(status[:journal_keys]).to eq(10)
              expect(status[:reasons]).to include("the primary's circuit breaker is open", "10 keys wait for re-sync",
                                                  "no full verify has run")
            end
          ensure
            resume(server)
          end

          expect(seconds_until(deadline: 10) { journal_drained?(store) }).not_to be_nil
          store.set("probe", 1) # closes the breaker if the re-sync has not
          expect(store.migration_status[:reasons]).to eq(["no full verify has run"])
          expect(store.verify).to be_in_agreement
          status = store.migration_status
          expect(status).to include(safe_to_switch: true, reasons: [])
          expect(status[:last_verify]).to include(in_agreement: true, full: true)
        end

        it "says no while write failures on the non-default store are recent, even once healed and verified" do
          server = dedicated_redis_server
          server.stop
          store = build_store(store_options(server), store_options(secondary_server), default: :secondary)
          store.set("k", 1)
          server.start(port: server.port)
          expect(seconds_until(deadline: 10) { journal_drained?(store) }).not_to be_nil
          expect(store.verify).to be_in_agreement

          status = store.migration_status
          expect(status[:safe_to_switch]).to be(false)
          expect(status[:reasons]).to eq(["1 write failures on the non-default store in the last 5 minutes"])
        end
      end
    end
  end
end
