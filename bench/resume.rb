# frozen_string_literal: true

# rake bench:resume -- a backfill of BENCH_RESUME_KEYS (default 1,000,000) keys, run from the
# command line (`gitlab-multistore backfill --checkpoint FILE [--resume]`) and killed with SIGKILL
# every few seconds, as deploys do, until a run finishes by itself. Meanwhile the application
# writes through a dual-writing MultiStore: newer values the copy must not overwrite, keys it
# deletes that must not come back. At the end: every key of the old store on the new one, the
# newer values kept, the deleted ones gone, and a verify in agreement.

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "gitlab_multistore"
require "gitlab_multistore/local_redis_server"
require "json"
require "rbconfig"
require "tmpdir"
require_relative "copy"

KEYS = Integer(ENV.fetch("BENCH_RESUME_KEYS", "1000000"))
CLI = File.expand_path("../exe/gitlab-multistore", __dir__)
LIB = File.expand_path("../lib", __dir__)

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

secondary = GitlabMultistore::LocalRedisServer.new
primary = GitlabMultistore::LocalRedisServer.new
Dir.mktmpdir("gitlab-multistore-resume-") do |dir|
  checkpoint = File.join(dir, "backfill.json")
  CopyBench.populate(secondary.client, KEYS)
  flags = ->(name) { name.to_s.start_with?("use_primary_and_secondary_stores") }
  store = Gitlab::Redis::MultiStore.new(primary.url, secondary.url, "resume_bench", feature_flags: flags)
  random = Random.new(Integer(ENV.fetch("BENCH_RESUME_SEED", "20261129")))

  # The application: every 2 ms a newer value for one string key, and a delete of a hash.
  newer = {}
  deleted = []
  stop = false
  application = Thread.new do
    until stop
      i = random.rand(KEYS / 5) * 5
      store.set("str:#{i}", "newer-#{i}")
      newer["str:#{i}"] = "newer-#{i}"
      j = random.rand(KEYS / 5) * 5 + 1
      deleted << "hash:#{j}" if store.del("hash:#{j}") == 1
      sleep 0.002
    end
  end

  runs = []
  finished = nil
  started = monotonic
  loop do
    args = [RbConfig.ruby, "-I", LIB, CLI, "backfill", "--primary", primary.url, "--secondary", secondary.url,
            "--checkpoint", checkpoint, "--json"]
    args << "--resume" unless runs.empty?
    output = IO.pipe
    pid = Process.spawn(*args, out: output[1], err: File::NULL)
    output[1].close
    kill_after = runs.size < 6 ? 1.5 + random.rand * 3 : nil # the seventh run may finish
    status = nil
    deadline = kill_after && monotonic + kill_after
    sleep 0.05 until (status = Process.wait2(pid, Process::WNOHANG)&.last) || (deadline && monotonic > deadline)
    unless status
      Process.kill(:KILL, pid)
      Process.wait(pid)
      output[0].close
      runs << :killed
      next
    end
    finished = JSON.parse(output[0].read)
    output[0].close
    runs << status.exitstatus
    break if status.success?

    raise "the backfill failed: #{finished}"
  end
  elapsed = monotonic - started
  stop = true
  application.join
  check = store.verify
  kept = newer.count { |key, value| primary.client.get(key) == value }
  back = deleted.count { |key| primary.client.exists?(key) }

  puts format("Resumed backfill: %d keys, %d runs killed with SIGKILL, finished by run %d, %.1f s in all",
              KEYS, runs.count(:killed), runs.size, elapsed)
  puts format("  the finishing run's report (counters carried over the kills): scanned %d, copied %d, " \
              "already present %d", finished["scanned"], finished["copied"], finished["already_present"])
  puts format("  new store: %d keys, old store: %d keys; newer values written meanwhile kept: %d of %d; " \
              "deleted meanwhile and back: %d of %d", primary.client.dbsize, secondary.client.dbsize,
              kept, newer.size, back, deleted.size)
  puts format("  verify: checked %d, missing on the new store %d, different %d, only on the new store %d -> %s",
              check.checked, check.missing_on_primary, check.different, check.only_on_primary,
              check.in_agreement? ? "in agreement" : "NOT in agreement")
  store.close
ensure
  [secondary, primary].each(&:cleanup)
end
