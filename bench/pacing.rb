# frozen_string_literal: true

# rake bench:pacing -- does `backfill(max_latency:)` keep the old store responsive? Another
# client (the application) pings the secondary every 2 ms while a backfill copies from it, and
# the pings' round trips are compared: no backfill, a backfill without a bound, a backfill with
# `max_latency:`, while the application keeps the secondary busy. Printed: the pings' median and 99th
# percentile, how long each backfill took and how long the paced one held back.
#
# BENCH_PACING_KEYS (default 200,000), BENCH_PACING_BOUND_MS (default 5).

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "gitlab_multistore"
require "gitlab_multistore/local_redis_server"
require_relative "copy"

KEYS = Integer(ENV.fetch("BENCH_PACING_KEYS", "200000"))
BOUND = Float(ENV.fetch("BENCH_PACING_BOUND_MS", "5")) / 1000

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def percentile(values, share)
  sorted = values.sort
  sorted[[(sorted.size * share).ceil - 1, 0].max] * 1000
end

# In a process of its own (the application's, not sharing this one's GVL): PINGs the secondary
# every 2 ms until told to stop, then hands back the round trips.
def probe(url)
  stop_r, stop_w = IO.pipe
  result_r, result_w = IO.pipe
  pid = fork do
    redis = Redis.new(url: url)
    samples = []
    while stop_r.read_nonblock(1, exception: false) == :wait_readable
      started = monotonic
      redis.ping
      samples << (monotonic - started)
      sleep 0.002
    end
    result_w.write(Marshal.dump(samples))
    exit!(0)
  end
  [stop_r, result_w].each(&:close)
  lambda do
    stop_w.write("x")
    Marshal.load(result_r.read)
  ensure
    Process.wait(pid)
  end
end

# The application keeping the secondary busy, in processes of their own: clients reading a
# 2,000-element list in a loop, so other clients wait in line behind them (what a production
# Redis near its capacity looks like). Returns a lambda that stops them.
def busy_application(url, clients: 2)
  Redis.new(url: url).tap { |r| r.rpush("pacing:big", Array.new(2_000) { |i| "element-#{i}" }) }.close
  pids = Array.new(clients) do
    fork do
      redis = Redis.new(url: url)
      loop { redis.lrange("pacing:big", 0, -1) }
    end
  end
  -> { pids.each { |pid| Process.kill(:KILL, pid) }.each { |pid| Process.wait(pid) } }
end

secondary = GitlabMultistore::LocalRedisServer.new
primary = GitlabMultistore::LocalRedisServer.new
begin
  flags = ->(name) { name.to_s.start_with?("use_primary_and_secondary_stores") }
  store = Gitlab::Redis::MultiStore.new(primary.url, secondary.url, "pacing_bench", feature_flags: flags)
  CopyBench.populate(secondary.client, KEYS)

  run = lambda do |noisy:, &work|
    primary.client.flushall
    stop_application = noisy ? busy_application(secondary.url) : -> {}
    collect = probe(secondary.url)
    sleep 0.2
    started = monotonic
    result = work ? work.call : sleep(2)
    elapsed = monotonic - started
    samples = collect.call
    stop_application.call
    [samples, elapsed, result]
  end

  puts format("Pacing: %d keys, the secondary pinged every 2 ms by another client", KEYS)
  puts format("  %-40s %9s %9s %9s %10s %10s", "", "p50 ms", "p90 ms", "p99 ms", "backfill s", "held back")
  row = lambda do |name, samples, took = nil, held = nil|
    puts format("  %-40s %9.2f %9.2f %9.2f %10s %10s", name, percentile(samples, 0.5), percentile(samples, 0.9),
                percentile(samples, 0.99), took ? format("%.1f", took) : "-", held ? format("%.1f s", held) : "-")
    $stdout.flush
  end
  row.call("no backfill", run.call(noisy: false).first)
  row.call("no backfill, busy application", run.call(noisy: true).first)
  row.call("backfill, busy application", *run.call(noisy: true) { store.backfill }.first(2))
  samples, took, report = run.call(noisy: true) { store.backfill(max_latency: BOUND) }
  row.call("backfill max_latency: #{(BOUND * 1000).round} ms, busy app", samples, took, report.held_back)
ensure
  store&.close
  [secondary, primary].each(&:cleanup)
end
