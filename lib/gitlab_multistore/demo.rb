# frozen_string_literal: true

require "tmpdir"
require "fileutils"
require "yaml"
require "gitlab_multistore/local_redis_server"
require "gitlab_multistore/local_redis_cluster"
require "gitlab_multistore/timeline"

module GitlabMultistore
  # `rake demo` / `gitlab-multistore demo`: a whole live migration on two throw-away
  # redis-servers, in under a minute. A Gitlab::Redis::Wrapper instance (`demo_sessions`, falling
  # back to `shared_state`) returns a MultiStore; worker threads use it the way a Rails app uses
  # its session store while the demo flips the feature flags through every step of the runbook,
  # backfills, verifies, and rolls back once. It ends with what an operator needs to know:
  # errors seen by callers and keys lost (both must be 0). The servers are stopped at the end,
  # Ctrl-C included. With `cluster: true` the new store is a 3-master Redis Cluster: the
  # standalone -> cluster move.
  class Demo
    # The old instance the partition is split off from.
    class SharedState < Gitlab::Redis::Wrapper; end

    # The new instance: its own Redis, falling back to SharedState's while unconfigured, and a
    # MultiStore over both during the migration -- as GitLab's "add a new Redis instance" guide.
    class DemoSessions < Gitlab::Redis::Wrapper
      class << self
        attr_accessor :flags
      end

      def self.config_fallback = SharedState

      def self.redis
        Gitlab::Redis::MultiStore.new(params, config_fallback.params, instance_name,
                                      feature_flags: flags, on_error: ->(_exception, _context) {})
      end
    end

    DUAL_WRITE = :use_primary_and_secondary_stores_for_demo_sessions
    PRIMARY_DEFAULT = :use_primary_store_as_default_for_demo_sessions
    WORKERS = 4
    SESSIONS = 2_000

    # The flags, flipped by the demo, read by every MultiStore call.
    class Flags
      def initialize
        @on = {}
      end

      def set(*flags)
        @on = flags.to_h { |flag| [flag, true] }
      end

      def call(flag)
        @on.fetch(flag, false)
      end
    end

    # @param metrics [MetricsServer, nil] serves /metrics while the demo runs, with the
    #   backfill's and verify's progress
    def initialize(out, quick: false, cluster: false, metrics: nil)
      @out = out
      @metrics = metrics
      @timeline = Timeline.new
      @started = monotonic
      @cluster = cluster
      @step_seconds = quick ? 0.4 : 3.0
      @sessions = quick ? 200 : SESSIONS
      @flags = Flags.new
      @errors = Queue.new
      @written = Array.new(WORKERS) { {} }
      @ops = 0
      @ops_lock = Mutex.new
    end

    attr_reader :summary

    def run
      start_servers
      explain_metrics
      configure_instances
      seed_old_store
      start_workload
      walk_through_the_migration
      finish
    rescue LocalRedisServer::MissingBinary => e
      say "Cannot run the demo: #{e.message}"
      false
    ensure
      stop_workload
      DemoSessions.reset_pool!
      @servers&.each(&:cleanup)
      @new_cluster&.cleanup
      FileUtils.remove_entry(@config_dir) if @config_dir && File.directory?(@config_dir)
    end

    private

    def start_servers
      @servers = []
      @servers << (@old = LocalRedisServer.new)
      if @cluster
        @new_cluster = LocalRedisCluster.new(masters: 3)
        say "Started the old store (secondary) #{@old.url} and the new store (primary), a Redis Cluster " \
            "of 3 masters: #{@new_cluster.urls.join(' ')}"
      else
        @servers << (@new = LocalRedisServer.new)
        say "Started two redis-servers: the old store (secondary) #{@old.url}, the new store (primary) #{@new.url}"
      end
    end

    # A plain redis-rb client of the new store, to check what it holds independently.
    def new_store_client
      @cluster ? ::Redis.new(cluster: @new_cluster.urls) : @new.client
    end

    def configure_instances
      @config_dir = Dir.mktmpdir("gitlab-multistore-demo")
      FileUtils.mkdir_p(File.join(@config_dir, "config"))
      env = Gitlab::Redis::Wrapper.rails_env
      File.write(File.join(@config_dir, "config", "redis.shared_state.yml"), "#{env}:\n  url: #{@old.url}\n")
      new_config = @cluster ? { "cluster" => @new_cluster.urls } : { "url" => @new.url }
      File.write(File.join(@config_dir, "config", "redis.demo_sessions.yml"), YAML.dump(env => new_config))
      [SharedState, DemoSessions].each { |klass| klass.rails_root = @config_dir }
      DemoSessions.flags = @flags
      # One more than the workers: the demo's own backfill and verify borrow a connection too.
      DemoSessions.pool_size = WORKERS + 1
      DemoSessions.reset_pool!
      say "Gitlab::Redis::Wrapper instances: shared_state -> #{SharedState.safe_url}, " \
          "demo_sessions -> #{DemoSessions.safe_url}; DemoSessions.redis is a MultiStore"
    end

    # What the partition holds before the migration: sessions and rate limits with TTLs, and
    # data without TTL that only a backfill can move (dual-writes never touch it).
    def seed_old_store
      redis = @old.client
      @sessions.times.each_slice(500) do |ids|
        redis.pipelined do |p|
          ids.each do |id|
            p.set("session:#{id}", "user-#{id}", ex: 3600 + id)
            p.set("rate_limit:#{id}", id % 17, ex: 60)
          end
        end
      end
      redis.sadd("feature_users", Array.new(100) { |i| "user-#{i}" })
      redis.mapped_hmset("settings", "theme" => "dark", "locale" => "en", "version" => "3")
      @seeded_without_ttl = { "feature_users" => redis.smembers("feature_users").sort, "settings" => redis.hgetall("settings") }
      say "Seeded the old store: #{redis.dbsize} keys (#{@sessions} sessions with TTLs, #{@sessions} rate limits, " \
          "a set and a hash without TTL)"
    end

    def start_workload
      @stop = false
      @phase_dual = false
      @workers = Array.new(WORKERS) { |t| Thread.new { work(t) } }
    end

    # Each worker reads sessions, writes its own, bumps rate limits and touches the set and hash:
    # a session store's traffic. It remembers what it wrote since dual-write began, to prove at
    # the end that nothing written through the MultiStore was lost.
    def work(thread)
      random = Random.new(thread)
      i = 0
      until @stop
        i += 1
        dual = @phase_dual
        begin
          DemoSessions.with do |redis|
            id = random.rand(@sessions)
            redis.get("session:#{id}")
            key = "session:worker-#{thread}-#{i % 500}"
            value = "v#{i}"
            redis.set(key, value, ex: 3600)
            @written[thread][key] = value if dual
            redis.pipelined do |p|
              p.incr("rate_limit:#{id}")
              p.expire("rate_limit:#{id}", 60)
            end
            redis.sismember("feature_users", "user-#{id % 100}")
            redis.hget("settings", "theme")
          end
          @ops_lock.synchronize { @ops += 6 }
        rescue StandardError => e
          @errors << "#{e.class}: #{e.message}"
        end
      end
    end

    def stop_workload
      @stop = true
      @workers&.each { |w| w.join(5) }
    end

    # How to watch the run in Prometheus: with --metrics-port the demo serves /metrics.
    def explain_metrics
      unless @metrics
        say "To watch the migration in Prometheus, run the demo with --metrics-port 9394 " \
            "(bin/demo --metrics-port 9394)."
        return
      end
      rules = File.expand_path("../../prometheus/gitlab_multistore.rules.yml", __dir__)
      say "Metrics: http://127.0.0.1:#{@metrics.port}/metrics -- to watch in Prometheus, add to prometheus.yml:"
      say "  rule_files: [#{rules}]"
      say "  scrape_configs: [{ job_name: gitlab_multistore_demo, scrape_interval: 1s, " \
          "static_configs: [{ targets: ['127.0.0.1:#{@metrics.port}'] }] }]"
    end

    def walk_through_the_migration
      step(1, "All traffic on the old store (no flag on)") { @flags.set }
      step(2, "Dual-write: #{DUAL_WRITE}") do
        @flags.set(DUAL_WRITE)
        @phase_dual = true
      end
      backfill_step(3)
      verify_step(4)
      step(5, "Primary as default: #{PRIMARY_DEFAULT} (writes still reach both)") { @flags.set(DUAL_WRITE, PRIMARY_DEFAULT) }
      step(6, "Rollback: back to dual-write with the old store as default") { @flags.set(DUAL_WRITE) }
      step(7, "Primary as default again") { @flags.set(DUAL_WRITE, PRIMARY_DEFAULT) }
      step(8, "Primary only: dual-write off, the old store gets nothing more") { @flags.set(PRIMARY_DEFAULT) }
    end

    def step(number, title)
      say ""
      say "Step #{number}: #{title}"
      @timeline.step(monotonic - @started, "#{number}. #{title}")
      yield
      watch(@step_seconds)
    end

    # Prints, per second, what an operator watches: throughput and the MultiStore's counters.
    def watch(seconds)
      now = nil
      before = counters
      ops_before = @ops
      @timeline_ops ||= ops_before
      started = monotonic
      slices = [(seconds / 1.0).ceil, 1].max
      slices.times do
        sleep(seconds / slices)
        previous = now || before
        now = counters
        elapsed = monotonic - started
        sample_timeline(previous, now, seconds / slices)
        say format("  %6.0f ops/s | read fallbacks %5d | pipeline diffs %4d | non-default write failures %d | " \
                   "method missing %d | caller errors %d",
                   (@ops - ops_before) / elapsed,
                   now[:fallbacks] - before[:fallbacks],
                   now[:pipeline_diffs] - before[:pipeline_diffs],
                   now[:write_failures] - before[:write_failures],
                   now[:method_missing] - before[:method_missing],
                   @errors.size)
      end
    end

    # One point of the picture: rates over the last slice, and the journal now.
    def sample_timeline(previous, now, seconds)
      ops = @ops
      rate = ->(key) { (now[key] - previous[key]) / seconds }
      @timeline.sample(monotonic - @started,
                       ops: (ops - (@timeline_ops || 0)) / seconds,
                       fallbacks: rate.call(:fallbacks), pipeline_diffs: rate.call(:pipeline_diffs),
                       write_failures: rate.call(:write_failures),
                       journal: DemoSessions.with { |redis| redis.migration_status[:journal_keys] })
      @timeline_ops = ops
    end

    def backfill_step(number)
      say ""
      say "Step #{number}: Backfill -- copy the keys dual-writes never touch (set, hash, old sessions)"
      @timeline.step(monotonic - @started, "#{number}. Backfill")
      report = DemoSessions.with do |redis|
        redis.backfill(count: 500) do |p|
          @metrics&.progress("backfill", p)
          say format("  backfill %3d%%: %d/%d keys scanned, %d copied, %d already present", p.fraction * 100,
                     p.scanned, p.total, p.copied, p.already_present)
        end
      end
      @backfill = report
      @metrics&.progress("backfill", report)
      say format("  done in %.2fs: copied %d, already present %d, expired %d, failed %d",
                 report.elapsed, report.copied, report.already_present, report.expired, report.failed)
    end

    # Counters incremented through dual-write before their old value was copied started from
    # zero on the new store: verify finds them, repair copies the old store's value over them.
    def verify_step(number)
      say ""
      say "Step #{number}: Verify -- do the stores agree?"
      @timeline.step(monotonic - @started, "#{number}. Verify")
      @verify = DemoSessions.with { |redis| redis.verify(count: 500) { |p| @metrics&.progress("verify", p) } }
      @metrics&.progress("verify", @verify)
      report_verify(@verify)
      return if @verify.in_agreement?

      say "  Repairing: copying the old store's value of each differing key (verify --repair)"
      repaired = DemoSessions.with { |redis| redis.verify(count: 500, repair: true) }
      say "  repaired #{repaired.repaired} keys, #{repaired.repair_failed} failed"
      @verify = DemoSessions.with { |redis| redis.verify(count: 500) }
      report_verify(@verify)
    end

    def report_verify(report)
      say format("  readiness %.2f%%: %d checked, %d missing on the primary, %d different, %d only on the primary -- %s",
                 report.readiness, report.checked, report.missing_on_primary, report.different,
                 report.only_on_primary, report.in_agreement? ? "safe to switch the default" : "NOT safe to switch yet")
    end

    def finish
      stop_workload
      lost = lost_keys
      caller_errors = Array.new(@errors.size) { @errors.pop }
      metrics_path = File.join(Dir.tmpdir, "gitlab-multistore-demo-metrics-#{Process.pid}.prom")
      File.write(metrics_path, Gitlab::Redis::MultiStore.metrics_text)
      timeline_path = @timeline.write(metrics_path.sub(/\.prom\z/, ".html"))
      @summary = {
        keys_on_old_store: @old.client.dbsize,
        keys_on_new_store: @cluster ? @new_cluster.dbsize : @new.client.dbsize,
        caller_errors: caller_errors.size,
        keys_lost: lost.size,
        verify_in_agreement: @verify.in_agreement?,
        metrics_path: metrics_path,
        timeline_path: timeline_path
      }
      say ""
      say "Summary"
      say "  keys on the old store: #{@summary[:keys_on_old_store]}, on the new store: #{@summary[:keys_on_new_store]}"
      say "  errors seen by callers: #{@summary[:caller_errors]}"
      caller_errors.first(5).each { |e| say "    #{e}" }
      say "  keys lost: #{@summary[:keys_lost]}"
      lost.first(5).each { |key| say "    #{key}" }
      say "  verify before the switch: #{@verify.in_agreement? ? 'in agreement' : 'disagreement'}"
      say "  Prometheus metrics written to #{metrics_path}"
      say "  a picture of the migration (open it in a browser): #{timeline_path}"
      caller_errors.empty? && lost.empty? && @verify.in_agreement?
    end

    # Every key written through the MultiStore since dual-write began, and the data the backfill
    # moved, must now be readable from the new store alone.
    def lost_keys
      new_store = new_store_client
      lost = []
      @written.each do |writes|
        # One GET each: redis-rb's cluster client refuses an MGET over several slots.
        actual = new_store.pipelined { |p| writes.each_key { |key| p.get(key) } } unless @cluster
        actual ||= writes.each_key.map { |key| new_store.get(key) }
        writes.zip(actual).each { |(key, value), got| lost << key unless got == value }
      end
      lost << "feature_users" unless new_store.smembers("feature_users").sort == @seeded_without_ttl["feature_users"]
      lost << "settings" unless new_store.hgetall("settings") == @seeded_without_ttl["settings"]
      lost
    end

    def counters
      text = Gitlab::Redis::MultiStore.metrics_text
      sum = lambda do |name|
        text.each_line.sum do |line|
          line.start_with?("#{name}{") && line.include?('instance_name="demo_sessions"') ? line.split.last.to_f : 0
        end
      end
      {
        fallbacks: sum.call("gitlab_redis_multi_store_read_fallback_total").to_i,
        write_failures: sum.call("gitlab_redis_multi_store_non_default_write_failures_total").to_i,
        pipeline_diffs: sum.call("gitlab_redis_multi_store_pipelined_diff_error_total").to_i,
        method_missing: sum.call("gitlab_redis_multi_store_method_missing_total").to_i
      }
    end

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    def say(line)
      @out.puts(line)
      @out.flush if @out.respond_to?(:flush)
    end
  end
end
