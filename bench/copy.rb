# frozen_string_literal: true

# rake bench (second part): backfill and verify against Redis's own server-side copy, on the same
# keys. The baseline is the loop an operator would write without this gem: SCAN pages of 1,000 on
# the old store and `MIGRATE host port "" 0 timeout COPY KEYS …` for each page (the old server
# serialises the keys and RESTOREs them on the new one itself). Contenders take turns on the same
# data, the new store flushed before each copy; each ratio is the median of the per-round ratios.
# Then the peak RSS of a backfill in a fresh process, at two key counts: it must stay flat.
#
# BENCH_COPY_KEYS (default 1,000,000), BENCH_COPY_SMALL (200,000), BENCH_COPY_ROUNDS (3).

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "gitlab_multistore"
require "gitlab_multistore/local_redis_server"
require "rbconfig"

module CopyBench
  KEYS = Integer(ENV.fetch("BENCH_COPY_KEYS", "1000000"))
  SMALL = Integer(ENV.fetch("BENCH_COPY_SMALL", "200000"))
  ROUNDS = Integer(ENV.fetch("BENCH_COPY_ROUNDS", "3"))
  PAGE = 1_000

  module_function

  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # `count` keys, a fifth each of strings with TTLs, hashes, sets, sorted sets and lists of five
  # elements, written by a script on the server (a client loop would take longer than the race).
  def populate(redis, count)
    redis.flushall
    script = <<~LUA
      local from, to = tonumber(ARGV[1]), tonumber(ARGV[2])
      for i = from, to do
        local kind = i % 5
        if kind == 0 then
          redis.call('SET', 'str:' .. i, 'value-' .. i, 'EX', 86400)
        elseif kind == 1 then
          redis.call('HSET', 'hash:' .. i, 'a', i, 'b', 'two', 'c', 'three', 'd', 'four', 'e', 'five')
        elseif kind == 2 then
          redis.call('SADD', 'set:' .. i, 'a', 'b', 'c', 'd', i)
        elseif kind == 3 then
          redis.call('ZADD', 'zset:' .. i, 1, 'a', 2, 'b', 3, 'c', 4, 'd', 5, i)
        else
          redis.call('RPUSH', 'list:' .. i, 'a', 'b', 'c', 'd', i)
        end
      end
      return to - from + 1
    LUA
    (0...count).step(50_000) { |from| redis.eval(script, argv: [from, [from + 50_000, count].min - 1]) }
    raise "populated #{redis.dbsize} keys, wanted #{count}" unless redis.dbsize == count
  end

  # The baseline: SCAN pages of 1,000 and MIGRATE … COPY KEYS for each.
  def migrate_loop(source, target_port)
    cursor = "0"
    loop do
      cursor, keys = source.scan(cursor, count: PAGE)
      source.call(:migrate, "127.0.0.1", target_port, "", 0, 60_000, :copy, :keys, *keys) unless keys.empty?
      break if cursor == "0"
    end
  end

  def timed
    started = monotonic
    yield
    monotonic - started
  end

  def median(values)
    sorted = values.sort
    sorted[sorted.size / 2]
  end

  # Peak RSS (VmHWM) of a fresh Ruby process that backfills `count` keys, in MB.
  def backfill_peak_rss(secondary, primary, count)
    populate(secondary.client, count)
    primary.client.flushall
    program = <<~RUBY
      $LOAD_PATH.unshift(#{File.expand_path('../lib', __dir__).inspect})
      require "gitlab_multistore"
      flags = ->(name) { name.to_s.start_with?("use_primary_and_secondary_stores") }
      store = Gitlab::Redis::MultiStore.new(#{primary.url.inspect}, #{secondary.url.inspect}, "copy_bench_rss", feature_flags: flags)
      report = store.backfill
      abort "backfill copied \#{report.copied} of #{count}" unless report.copied == #{count}
      puts File.read("/proc/self/status")[/VmHWM:\\s+(\\d+)/, 1]
    RUBY
    output = IO.popen([RbConfig.ruby, "-e", program], &:read)
    raise "the backfill process failed" unless $?.success?

    Integer(output.strip) / 1024.0
  end
end

# The race itself, when run as a program (bench/pacing.rb borrows `CopyBench.populate`).
if __FILE__ == $PROGRAM_NAME
  secondary = GitlabMultistore::LocalRedisServer.new
  primary = GitlabMultistore::LocalRedisServer.new
  begin
    old = secondary.client
    new = primary.client
    flags = ->(name) { name.to_s.start_with?("use_primary_and_secondary_stores") }
    store = Gitlab::Redis::MultiStore.new(primary.url, secondary.url, "copy_bench", feature_flags: flags)

    populated = CopyBench.timed { CopyBench.populate(old, CopyBench::KEYS) }
    puts format("Copy benchmark: %d keys (strings with TTLs, hashes, sets, sorted sets, lists), populated in %.1fs",
                CopyBench::KEYS, populated)

    times = Hash.new { |h, k| h[k] = [] }
    CopyBench::ROUNDS.times do
      new.flushall
      times[:migrate] << CopyBench.timed { CopyBench.migrate_loop(old, primary.port) }
      raise "MIGRATE copied #{new.dbsize} keys" unless new.dbsize == CopyBench::KEYS

      new.flushall
      report = nil
      times[:backfill] << CopyBench.timed { report = store.backfill }
      raise "backfill copied #{report.copied} keys" unless report.copied == CopyBench::KEYS && new.dbsize == CopyBench::KEYS

      check = nil
      times[:verify] << CopyBench.timed { check = store.verify }
      raise "verify found the copy different: #{check.to_h}" unless check.in_agreement? && check.checked == CopyBench::KEYS
    end

    ratio = ->(name) { CopyBench.median(times[:migrate].zip(times[name]).map { |m, t| m / t }) }
    rate = ->(name) { CopyBench::KEYS / CopyBench.median(times[name]) }
    puts "Ratios (higher is better for MultiStore; SCAN 1,000 + MIGRATE COPY KEYS loop = 1)"
    puts format("  %-44s %.2fx", "backfill / MIGRATE loop", ratio.call(:backfill))
    puts format("  %-44s %.2fx", "verify / MIGRATE loop", ratio.call(:verify))
    puts "Absolute (median keys/s)"
    %i[migrate backfill verify].each { |name| puts format("  %-44s %10.0f", name, rate.call(name)) }

    small = CopyBench.backfill_peak_rss(secondary, primary, CopyBench::SMALL)
    large = CopyBench.backfill_peak_rss(secondary, primary, CopyBench::KEYS)
    puts format("Backfill peak RSS: %.1f MB at %d keys, %.1f MB at %d keys (%.2fx)",
                small, CopyBench::SMALL, large, CopyBench::KEYS, large / small)
  ensure
    store&.close
    [secondary, primary].each(&:cleanup)
  end
end
