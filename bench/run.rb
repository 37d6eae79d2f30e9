# frozen_string_literal: true

# rake bench: MultiStore against plain redis-rb 4.8 (Ruby driver, and hiredis when installed)
# and against a sequential pure-Ruby dual-write store, on two loopback redis-servers it starts.
# Every comparison is measured side by side in one run: the contenders take turns in short
# rounds, and each ratio is the median of the per-round ratios, so a noisy neighbour slows both
# sides of a round alike. Ratios first, absolute ops/s after.

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "gitlab_multistore"
require "gitlab_multistore/local_redis_server"
require "connection_pool"
require_relative "sequential_multi_store"

module Bench
  ROUND_SECONDS = Float(ENV.fetch("BENCH_ROUND_SECONDS", "0.4"))
  ROUNDS = Integer(ENV.fetch("BENCH_ROUNDS", "5"))
  # A pattern to race only some operations (BENCH_ONLY=HGETALL): a quick check while profiling.
  ONLY = ENV["BENCH_ONLY"] && Regexp.new(ENV["BENCH_ONLY"])
  THREADS = 8

  HIREDIS =
    begin
      require "redis/connection/hiredis"
      true
    rescue LoadError
      false
    end

  module_function

  # Operations per second of `op` (called with a client) over one round, on `threads` threads
  # that each borrow a client from `clients`.
  def ops_per_second(clients, threads, op)
    stop_at = Process.clock_gettime(Process::CLOCK_MONOTONIC) + ROUND_SECONDS
    counts = Array.new(threads) do
      Thread.new do
        n = 0
        clients.call do |client|
          while Process.clock_gettime(Process::CLOCK_MONOTONIC) < stop_at
            op.call(client)
            n += 1
          end
        end
        n
      end
    end.map(&:value)
    counts.sum / ROUND_SECONDS
  end

  # Runs the contenders in alternating rounds; returns { name => [ops/s per round] }. A short
  # unmeasured round first warms each one up (connections opened, caches filled).
  def race(contenders, threads, op)
    contenders.each_value { |clients| warm_up(clients, threads, op) }
    results = Hash.new { |h, k| h[k] = [] }
    ROUNDS.times do
      contenders.each { |name, clients| results[name] << ops_per_second(clients, threads, op) }
    end
    results
  end

  def warm_up(clients, threads, op)
    Array.new(threads) { Thread.new { clients.call { |client| 50.times { op.call(client) } } } }.each(&:join)
  end

  def median(values)
    sorted = values.sort
    mid = sorted.size / 2
    sorted.size.odd? ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2.0
  end

  def ratio(results, a, b)
    median(results[a].zip(results[b]).map { |x, y| x / y })
  end
end

servers = [GitlabMultistore::LocalRedisServer.new, GitlabMultistore::LocalRedisServer.new]
old_store, new_store = servers
at_exit { servers.each(&:cleanup) }

flags = Hash.new(false)
flag_source = ->(flag) { flags[flag] }
multi_store = lambda do
  Gitlab::Redis::MultiStore.new(new_store.url, old_store.url, "bench", feature_flags: flag_source, on_error: ->(*) {})
end

# A shared instance for MultiStore (its core pools connections); a ConnectionPool of redis-rb
# clients for redis-rb, as a multi-threaded app uses it (one redis-rb client serialises threads).
shared = ->(client) { ->(&blk) { blk.call(client) } }
pooled = ->(factory) { pool = ConnectionPool.new(size: Bench::THREADS) { factory.call }; ->(&blk) { pool.with(&blk) } }

ms = multi_store.call
contenders_for = lambda do |threads|
  plain = -> { old_store.client }
  c = {
    "redis-rb" => threads == 1 ? shared.call(plain.call) : pooled.call(plain),
    "MultiStore" => shared.call(ms)
  }
  if Bench::HIREDIS
    hiredis = -> { Redis.new(url: old_store.url, driver: :hiredis) }
    c["redis-rb+hiredis"] = threads == 1 ? shared.call(hiredis.call) : pooled.call(hiredis)
  end
  sequential = -> { SequentialMultiStore.new(new_store.client, old_store.client) }
  c["sequential Ruby dual-write"] = threads == 1 ? shared.call(sequential.call) : pooled.call(sequential)
  c
end

# Data the reads find on both stores.
[old_store, new_store].each do |server|
  r = server.client
  r.set("bench:get", "x" * 100)
  r.mset(*Array.new(100) { |i| ["bench:mget:#{i}", "value-#{i}"] }.flatten)
  r.mapped_hmset("bench:hash", Array.new(1000) { |i| ["field-#{i}", "value-#{i}"] }.to_h)
end
mget_keys = Array.new(100) { |i| "bench:mget:#{i}" }

ops = {
  "GET" => ->(r) { r.get("bench:get") },
  "SET" => ->(r) { r.set("bench:set", "v" * 100) },
  "MGET 100" => ->(r) { r.mget(*mget_keys) },
  "HGETALL 1000" => ->(r) { r.hgetall("bench:hash") },
  "pipeline 100" => ->(r) { r.pipelined { |p| 100.times { |i| p.set("bench:p:#{i}", i) } } }
}

flag_states = {
  "flags off" => {},
  "dual-write" => { use_primary_and_secondary_stores_for_bench: true },
  "primary only" => { use_primary_store_as_default_for_bench: true }
}

cpu = File.read("/proc/cpuinfo")[/model name\s*:\s*(.*)/, 1] rescue "unknown CPU" # rubocop:disable Style/RescueModifier
puts "gitlab_multistore benchmark: #{Etc.nprocessors} cores (#{cpu}), Ruby #{RUBY_VERSION}, redis-rb #{Redis::VERSION}, " \
     "redis-server #{old_store.client.info['redis_version']} on loopback"
puts "#{Bench::ROUNDS} alternating rounds of #{Bench::ROUND_SECONDS}s per contender; ratios are medians of per-round ratios."
puts "hiredis driver: #{Bench::HIREDIS ? 'installed' : 'not installed (ruby-hiredis)'}"
puts

absolute = []
ratios = []
[1, Bench::THREADS].each do |threads|
  contenders = contenders_for.call(threads)
  flag_states.each do |state, on|
    flags.replace(on)
    # Dual-write as a migration spends it: after a verify found the stores in agreement. Before
    # that, a read also asks the primary whether it has the keys it names (an EXISTS per key in
    # the same round trip), which `rake bench` measures apart below.
    ms.verify(repair: true) if state == "dual-write"
    ops.each do |op_name, op|
      next if Bench::ONLY && !op_name.match?(Bench::ONLY)

      # The plain clients and the sequential store do not look at flags: in the "primary only"
      # state they still talk to the old store, which is the same work.
      results = Bench.race(contenders, threads, op)
      label = "#{op_name}, #{state}, #{threads} thread#{'s' if threads > 1}"
      ratios << [label, "MultiStore / redis-rb", Bench.ratio(results, "MultiStore", "redis-rb")]
      ratios << [label, "MultiStore / redis-rb+hiredis", Bench.ratio(results, "MultiStore", "redis-rb+hiredis")] if Bench::HIREDIS
      if state == "dual-write"
        ratios << [label, "MultiStore / sequential Ruby dual-write",
                   Bench.ratio(results, "MultiStore", "sequential Ruby dual-write")]
      end
      results.each { |name, values| absolute << [label, name, Bench.median(values)] }
    end
  end
end

# Reads during dual-write before any verify: the primary is asked in the same round trip whether
# it has every key a read names (it may not be backfilled yet), one EXISTS per key.
unverified = Gitlab::Redis::MultiStore.new(new_store.url, old_store.url, "bench_unverified",
                                           feature_flags: flag_source, on_error: ->(*) {})
flags.replace(use_primary_and_secondary_stores_for_bench_unverified: true)
%w[GET MGET\ 100].each do |op_name|
  next if Bench::ONLY && !op_name.match?(Bench::ONLY)

  results = Bench.race({ "redis-rb" => shared.call(old_store.client), "MultiStore" => shared.call(unverified) }, 1, ops[op_name])
  ratios << ["#{op_name}, dual-write before a verify, 1 thread", "MultiStore / redis-rb", Bench.ratio(results, "MultiStore", "redis-rb")]
end

# Scaling: one shared MultiStore, 8 threads against 1 (the GVL is released during I/O).
flags.replace({})
scaling = Hash.new { |h, k| h[k] = [] }
Bench::ROUNDS.times do
  scaling[1] << Bench.ops_per_second(shared.call(ms), 1, ops["GET"])
  scaling[8] << Bench.ops_per_second(shared.call(ms), 8, ops["GET"])
end
ratios << ["GET, flags off", "MultiStore 8 threads / 1 thread", Bench.median(scaling[8].zip(scaling[1]).map { |a, b| a / b })]

# Cost of the per-request metrics (requests_total, duration_seconds): a difference of a few
# percent drowns in the noise of throughput on a shared machine, so it is measured as the
# process's CPU time per call, metrics on against off, in alternating rounds.
cpu_time = -> { Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) }
[["GET", ops["GET"]], ["SET", ops["SET"]]].each do |op_name, op|
  per_round = Array.new(Bench::ROUNDS * 3) do
    costs = [true, false].map do |enabled|
      Gitlab::Redis::MultiStore.request_metrics = enabled
      started = cpu_time.call
      2_000.times { op.call(ms) }
      cpu_time.call - started
    end
    costs[1] / costs[0]
  end
  Gitlab::Redis::MultiStore.request_metrics = true
  ratios << ["#{op_name}, flags off, 1 thread", "CPU per call: metrics off / metrics on", Bench.median(per_round)]
end

# Memory per instance: 200 MultiStores, each with a connection open to both stores.
def rss_kb = File.read("/proc/self/status")[/VmRSS:\s+(\d+)/, 1].to_i
GC.start
before = rss_kb
instances = Array.new(200) do
  m = multi_store.call
  flags.replace(use_primary_and_secondary_stores_for_bench: true)
  m.set("bench:mem", "x")
  m
end
GC.start
per_instance = (rss_kb - before) / 200.0
flags.replace({})

puts "Ratios (higher is better for MultiStore)"
puts format("  %-42s %-42s %s", "operation, flags, threads", "comparison", "ratio")
ratios.each { |label, comparison, value| puts format("  %-42s %-42s %.2fx", label, comparison, value) }
puts
puts format("Memory: %.1f KiB RSS per MultiStore instance with one connection open to each store (%d instances)",
            per_instance, instances.size)
puts
puts "Absolute throughput (median ops/s)"
absolute.each { |label, name, value| puts format("  %-42s %-30s %10.0f", label, name, value) }
