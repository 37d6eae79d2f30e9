# frozen_string_literal: true

require "tmpdir"
require "fileutils"
require "yaml"
require "gitlab_multistore/local_redis_server"
require "gitlab_multistore/local_redis_cluster"
require "gitlab_multistore/timeline"
require "gitlab_multistore/prometheus_config"

module GitlabMultistore
  # `rake demo` / `gitlab-multistore demo`: a whole live migration on two throw-away
  # redis-servers, in under a minute. A Gitlab::Redis::Wrapper instance (`demo_sessions`, falling
  # back to `shared_state`) returns a MultiStore; worker threads use it the way a Rails app uses
  # its session store while the demo flips the feature flags through every step of the runbook,
  # backfills, hangs the new store (SIGSTOP) and lets it resume, verifies, and rolls back once.
  # It ends with what an operator needs to know:
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
                                      feature_flags: flags, on_error: ->(_exception, _context) {},
                                      breaker_threshold: BREAKER_THRESHOLD, breaker_cool_down: BREAKER_COOL_DOWN)
      end
    end

    DUAL_WRITE = :use_primary_and_secondary_stores_for_demo_sessions
    PRIMARY_DEFAULT = :use_primary_store_as_default_for_demo_sessions
    WORKERS = 4
    SESSIONS = 2_000
    # The new store's timeouts in its configuration file: a hung new store then costs a caller
    # half a second (not redis-rb's default 5) until the circuit breaker takes it out.
    NEW_STORE_TIMEOUT = 0.5
    # Seconds the breaker skips the hung store before one call probes it again (default 5): short,
    # so the demo shows it probing while the store hangs and closing soon after it resumes.
    BREAKER_COOL_DOWN = 1
    # How long the new store hangs; a cluster's master for less than the cluster's node timeout,
    # or the other masters would mark it failed and (with no replica to promote) the whole
    # cluster would refuse every command: an outage of the new store, not a hang of one node.
    HANG_SECONDS = 8.0
    QUICK_HANG_SECONDS = 4.0
    CLUSTER_HANG_SECONDS = LocalRedisCluster::NODE_TIMEOUT * 0.75
    # In the cluster, the master serving this key is the one that hangs: every worker reads it.
    HUNG_KEY = "settings"
    # Failures of the new store in a row after which its circuit breaker opens (the default).
    BREAKER_THRESHOLD = 3
    # The re-sync has this long to bring the new store back in line after it resumes.
    RESYNC_DEADLINE = 30

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
      @hang_seconds = cluster ? CLUSTER_HANG_SECONDS : (quick ? QUICK_HANG_SECONDS : HANG_SECONDS)
      @sessions = quick ? 200 : SESSIONS
      @flags = Flags.new
      @errors = Queue.new
      @written = Array.new(WORKERS) { {} }
      @own_writes = {}
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
      new_config.merge!("connect_timeout" => NEW_STORE_TIMEOUT, "read_timeout" => NEW_STORE_TIMEOUT)
      File.write(File.join(@config_dir, "config", "redis.demo_sessions.yml"), YAML.dump(env => new_config))
      [SharedState, DemoSessions].each { |klass| klass.rails_root = @config_dir }
      DemoSessions.flags = @flags
      # One more than the workers: the demo's own backfill and verify borrow a connection too.
      DemoSessions.pool_size = WORKERS + 1
      DemoSessions.reset_pool!
      new_store = @cluster ? "cluster #{@new_cluster.urls.join(',')}" : DemoSessions.safe_url
      say "Gitlab::Redis::Wrapper instances: shared_state -> #{SharedState.safe_url}, demo_sessions -> #{new_store} " \
          "(read_timeout #{NEW_STORE_TIMEOUT} s); DemoSessions.redis is a MultiStore (breaker_cool_down #{BREAKER_COOL_DOWN} s)"
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

    # How to watch the run in Prometheus: with --metrics-port the demo serves /metrics, and
    # writes a Prometheus configuration that scrapes it and evaluates the shipped rules.
    def explain_metrics
      unless @metrics
        say "To watch the migration and its alerts in Prometheus, run the demo with --metrics-port 9394 " \
            "(bin/demo --metrics-port 9394)."
        return
      end
      target = "127.0.0.1:#{@metrics.port}"
      # Kept after the demo, like its metrics file: a Prometheus started with it serves every
      # later run on the same port.
      dir = FileUtils.mkdir_p(File.join(Dir.tmpdir, "gitlab-multistore-demo-prometheus-#{@metrics.port}")).first
      config = PrometheusConfig.write(dir, target: target, rules: PrometheusConfig.rules_with_hold(File.join(dir, "rules.yml")))
      say "Metrics: http://#{target}/metrics -- to watch the alerts fire (step 4 hangs the new store), start Prometheus " \
          "with the configuration written for it and run the demo (again) with this --metrics-port:"
      say "  prometheus --config.file=#{config} --storage.tsdb.path=#{File.join(dir, 'data')} " \
          "--web.listen-address=127.0.0.1:9090"
      say "  then open http://127.0.0.1:9090/alerts. It loads #{PrometheusConfig::RULES} with every alert's `for:` set " \
          "to 0 s (the shipped durations, minutes, outlast the demo); in your own prometheus.yml: " \
          "rule_files: [#{PrometheusConfig::RULES}], scrape_configs: [{ job_name: gitlab_multistore, " \
          "static_configs: [{ targets: ['#{target}'] }] }]"
    end

    def walk_through_the_migration
      step(1, "All traffic on the old store (no flag on)") { @flags.set }
      step(2, "Dual-write: #{DUAL_WRITE}") do
        @flags.set(DUAL_WRITE)
        @phase_dual = true
      end
      backfill_step(3)
      hang_step(4)
      verify_step(5)
      step(6, "Primary as default: #{PRIMARY_DEFAULT} (writes still reach both)") { @flags.set(DUAL_WRITE, PRIMARY_DEFAULT) }
      step(7, "Rollback: back to dual-write with the old store as default") { @flags.set(DUAL_WRITE) }
      step(8, "Primary as default again") { @flags.set(DUAL_WRITE, PRIMARY_DEFAULT) }
      step(9, "Primary only: dual-write off, the old store gets nothing more") { @flags.set(PRIMARY_DEFAULT) }
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
                       write_failures: rate.call(:write_failures), journal: now[:journal])
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

    # The new store hangs (a stopped process: connections accepted by the kernel, never
    # answered -- what a stalled disk, a swapping host or a long fork look like to a client)
    # while dual-write is on and the old store is still the default, which every caller is
    # answered from. Nothing may reach the callers; what the new store misses must come back.
    def hang_step(number)
      victim, what = hang_target
      seconds = format("%.1f", @hang_seconds)
      say ""
      say "Step #{number}: The new store hangs: SIGSTOP to #{what} for #{seconds} s, then SIGCONT " \
          "(dual-write on, the old store still the default)"
      @timeline.step(monotonic - @started, "#{number}. The new store hangs (SIGSTOP for #{seconds} s)")
      hung = @cluster ? "the master" : "the new store"
      say "  Callers are answered by the old store. Each call to #{@cluster ? 'the hung master' : hung} waits " \
          "its read_timeout (#{NEW_STORE_TIMEOUT} s) and fails; the keys of the writes it missed are journaled. After " \
          "#{BREAKER_THRESHOLD} failures in a row the new store's circuit breaker skips it, probing it every " \
          "#{BREAKER_COOL_DOWN} s."
      say "  The breaker is the whole cluster's: while it is open the 2 masters that answer are skipped too." if @cluster
      before = counters
      peak = 0
      begin
        Process.kill(:STOP, victim.pid)
        stopped = monotonic
        wait_until_stopped(victim.pid)
        say "  SIGSTOP sent to pid #{victim.pid}: #{hung} hangs"
        write_while_hung
        peak = watch_hang(before, stopped)
      ensure
        # Said first: a reader of the output (the Prometheus spec) knows the store hung until then.
        say "  SIGCONT sent to pid #{victim.pid}: #{hung} answers again"
        Process.kill(:CONT, victim.pid)
      end
      resumed = monotonic
      back = wait_until_back_in_line(before, resumed)
      @hang = hang_report(before, peak, back && back - resumed)
      narrate_hang(@hang)
    end

    # The server to stop: the new store, or the cluster master serving the hash every worker
    # reads on every round (its slot is as hot as a slot gets).
    def hang_target
      return [@new, "the new store's redis-server (pid #{@new.pid})"] unless @cluster

      master = @new_cluster.master_of(HUNG_KEY)
      [master, "one of the new cluster's 3 masters, 127.0.0.1:#{master.port} (pid #{master.pid}, serving " \
               "the key #{HUNG_KEY.inspect})"]
    end

    # SIGSTOP is delivered asynchronously: the demo's own write must not reach the server before
    # it stops.
    def wait_until_stopped(pid)
      stat = "/proc/#{pid}/stat"
      return sleep(0.05) unless File.readable?(stat)

      deadline = monotonic + 1
      # The state follows the command name, which is in parentheses.
      sleep 0.001 until File.read(stat)[/.*\) (\S)/, 1] == "T" || monotonic > deadline
    end

    # One write of the demo's own, sent before any worker's call to the hung store has timed out
    # (so before the breaker can open): what a caller sees, and a write failure on the new store
    # for certain -- the workers' first calls into the hang may all be reads. The key shares the
    # hung master's slot in the cluster.
    def write_while_hung
      key = "{#{HUNG_KEY}}:written-while-hung"
      value = "at #{Time.now.utc.strftime('%H:%M:%S.%L')}"
      started = monotonic
      reply = DemoSessions.with { |redis| redis.set(key, value) }
      took = monotonic - started
      @own_writes[key] = value
      # Only a wait as long as the read_timeout says the new store was tried.
      why = if took >= NEW_STORE_TIMEOUT * 0.9
              "the new store's copy timed out and its key is journaled"
            else
              "the breaker was already open: the new store was skipped and the key journaled"
            end
      say format("  A caller's SET %s through the MultiStore: %p after %.2f s -- the old store's reply; %s",
                 key, reply, took, why)
    rescue StandardError => e
      @errors << "#{e.class}: #{e.message}"
      say "  A caller's SET #{key} through the MultiStore raised #{e.class}: #{e.message}"
    end

    # A line per second until the store has hung for @hang_seconds; returns the journal's peak.
    def watch_hang(before, stopped)
      ops_before = @ops
      measured = monotonic
      peak = 0
      previous = before
      until (hung = monotonic - stopped) >= @hang_seconds
        sleep([1.0, @hang_seconds - hung].min)
        now = counters
        peak = [peak, now[:journal]].max
        sample_timeline(previous, now, monotonic - measured)
        previous = now
        say format("  %4.1f s hung: %6.0f ops/s | write failures %3d, skipped by the breaker %5d | breaker %-9s | " \
                   "journal %4d keys | read fallbacks %3d | caller errors %d",
                   monotonic - stopped, (@ops - ops_before) / (monotonic - measured),
                   now[:write_failures] - before[:write_failures], now[:breaker_skipped] - before[:breaker_skipped],
                   breaker_state, now[:journal], now[:fallbacks] - before[:fallbacks], @errors.size)
        ops_before = @ops
        measured = monotonic
      end
      peak
    end

    # Until the breaker is closed and the re-sync has emptied the journal: the monotonic time
    # it happened, or nil past RESYNC_DEADLINE.
    def wait_until_back_in_line(before, resumed)
      previous = counters
      sampled = resumed
      loop do
        sleep 0.1
        now = counters
        back = now[:journal].zero? && breaker_state == :closed
        if back || monotonic - sampled >= 1
          sample_timeline(previous, now, monotonic - sampled)
          previous = now
          sampled = monotonic
          say format("  %4.1f s after SIGCONT: breaker %-9s | journal %4d keys | re-synced %4d keys | caller errors %d",
                     monotonic - resumed, breaker_state, now[:journal], now[:resynced] - before[:resynced], @errors.size)
        end
        return monotonic if back
        return nil if monotonic - resumed > RESYNC_DEADLINE
      end
    end

    # The primary's circuit breaker (:closed, :open, :half_open). migration_status does not wait
    # on a store whose breaker is open.
    def breaker_state
      DemoSessions.with { |redis| redis.migration_status[:breaker][:primary] }
    end

    def hang_report(before, peak, back_in)
      after = counters
      {
        seconds: @hang_seconds,
        write_failures: after[:write_failures] - before[:write_failures],
        breaker_opened: after[:breaker_opened] - before[:breaker_opened],
        breaker_skipped: after[:breaker_skipped] - before[:breaker_skipped],
        journal_peak: peak,
        resynced: after[:resynced] - before[:resynced],
        journal_after: after[:journal],
        back_in_line_after: back_in,
        caller_errors: @errors.size
      }
    end

    def narrate_hang(hang)
      unless hang[:back_in_line_after]
        say "  NOT back in line #{RESYNC_DEADLINE} s after SIGCONT: #{hang[:journal_after]} keys still wait for re-sync"
        return
      end

      say format("  Back in line %.1f s after SIGCONT: %s failed on the new store and %d were skipped by its " \
                 "breaker (opened %s), all journaled (peak %d keys); the re-sync copied %d keys from the old store " \
                 "and the journal is empty. Callers saw %s.",
                 hang[:back_in_line_after], plural(hang[:write_failures], "write"), hang[:breaker_skipped],
                 times(hang[:breaker_opened]), hang[:journal_peak], hang[:resynced], plural(hang[:caller_errors], "error"))
      return unless @cluster && hang[:breaker_opened].zero?

      say "  The breaker stayed closed: the other masters answered between the hung one's timeouts, and it opens " \
          "only after #{BREAKER_THRESHOLD} failures of the store in a row."
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
        new_store_hang: @hang,
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
      back = @hang[:back_in_line_after]
      say format("  the new store's hang: %s, breaker opened %s, %d keys re-synced, %s",
                 plural(@hang[:write_failures], "write failure"), times(@hang[:breaker_opened]), @hang[:resynced],
                 back ? format("back in line %.1f s after it resumed", back) : "NOT back in line")
      say "  verify before the switch: #{@verify.in_agreement? ? 'in agreement' : 'disagreement'}"
      say "  Prometheus metrics written to #{metrics_path}"
      say "  a picture of the migration (open it in a browser): #{timeline_path}"
      caller_errors.empty? && lost.empty? && @verify.in_agreement? && !back.nil?
    end

    # Every key written through the MultiStore since dual-write began, and the data the backfill
    # moved, must now be readable from the new store alone.
    def lost_keys
      new_store = new_store_client
      lost = []
      [*@written, @own_writes].each do |writes|
        # One GET each: redis-rb's cluster client refuses an MGET over several slots.
        actual = new_store.pipelined { |p| writes.each_key { |key| p.get(key) } } unless @cluster
        actual ||= writes.each_key.map { |key| new_store.get(key) }
        writes.zip(actual).each { |(key, value), got| lost << key unless got == value }
      end
      lost << "feature_users" unless new_store.smembers("feature_users").sort == @seeded_without_ttl["feature_users"]
      lost << "settings" unless new_store.hgetall("settings") == @seeded_without_ttl["settings"]
      lost
    end

    # The MultiStore's own metrics, read from its exposition text: no round trip to a store, so
    # they can be read while one hangs.
    def counters
      text = Gitlab::Redis::MultiStore.metrics_text
      sum = lambda do |name, label = nil|
        text.each_line.sum do |line|
          next 0 unless line.start_with?("gitlab_redis_multi_store_#{name}{") && line.include?('instance_name="demo_sessions"')

          label.nil? || line.include?(label) ? line.split.last.to_f : 0
        end.to_i
      end
      {
        fallbacks: sum.call("read_fallback_total"),
        write_failures: sum.call("non_default_write_failures_total"),
        pipeline_diffs: sum.call("pipelined_diff_error_total"),
        method_missing: sum.call("method_missing_total"),
        breaker_opened: sum.call("breaker_opened_total", 'store="primary"'),
        breaker_skipped: sum.call("breaker_skipped_total"),
        resynced: sum.call("resynced_keys_total"),
        journal: sum.call("journal_keys")
      }
    end

    def times(count) = { 0 => "never", 1 => "once" }.fetch(count, "#{count} times")

    def plural(count, noun) = "#{count} #{noun}#{'s' unless count == 1}"

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    def say(line)
      @out.puts(line)
      @out.flush if @out.respond_to?(:flush)
    end
  end
end
