# frozen_string_literal: true

require "timeout"

module MultistoreFuzz
  # An invariant that did not hold, at a step.
  class Failure < StandardError
    attr_reader :kind, :step_index

    def initialize(kind, detail, step_index)
      @kind = kind
      @step_index = step_index
      super("#{kind} at step #{step_index}: #{detail}")
    end
  end

  # A step that took longer than any of its timeouts allows.
  class Hang < StandardError; end

  # Three real servers (the MultiStore's primary and secondary, and a reference that a plain
  # redis-rb client uses as a single Redis would be used), one MultiStore, and the flags, faults
  # and operator actions a program drives. After every step it checks:
  # - the MultiStore answered as the reference did (value, or exception class and message);
  # - the default store holds what the reference holds: no write lost or applied twice;
  # - with dual-write on and nothing pending (no fault, journal empty, no full verify needed, no
  #   command in doubt), both stores hold the same;
  # - `migration_status[:safe_to_switch]` true means the stores hold the same;
  # - no call took longer than its timeouts plus a margin.
  class World
    NAME = "fuzz"
    TIMEOUT = 0.25
    STEP_DEADLINE = 15.0
    LONG_STEP_DEADLINE = 90.0
    ENV_DUAL = "GITLAB_MULTISTORE_USE_PRIMARY_AND_SECONDARY_STORES_FOR_FUZZ"
    ENV_DEFAULT = "GITLAB_MULTISTORE_USE_PRIMARY_STORE_AS_DEFAULT_FOR_FUZZ"
    BUSY = "local t = redis.call('TIME'); local s = t[1] + t[2] / 1e6; " \
           "repeat t = redis.call('TIME') until t[1] + t[2] / 1e6 - s > 0.4; return 1"

    attr_reader :store, :servers, :checks

    def initialize(servers, grammar, read_strategy:)
      @servers = servers
      @grammar = grammar
      @read_strategy = read_strategy
      @checks = Hash.new(0)
      @main = Thread.current
      @deadline = nil
      @watchdog = Thread.new { watch }
      reset!
    end

    def close
      @watchdog.kill
      @store&.close
      ENV.delete(ENV_DUAL)
      ENV.delete(ENV_DEFAULT)
    end

    # Back to empty servers, every flag off and a new MultiStore.
    def reset!
      @servers.each_value { |server| resume(server) }
      @hung = nil
      @store&.close
      @servers.each_value do |server|
        server.client.tap do |c|
          c.flushall
          c.script(:flush)
          c.close
        end
      end
      # The servers were wiped: what earlier MultiStores of this partition learned goes too.
      Gitlab::Redis::MultiStore.forget_partitions!
      @flags = { dual: false, primary_default: false }
      @mechanism = :callback
      ENV.delete(ENV_DUAL)
      ENV.delete(ENV_DEFAULT)
      @state = :off
      @db = 0
      @restart_unnoticed = false
      # The databases whose stores are known to have held the same since dual-write has been on:
      # a verify with repair found them in agreement (before that, keys written with dual-write
      # off are on one store only, which is what backfill and repair are for). A verify covers
      # the database the MultiStore is on.
      @synced = []
      @reports = []
      @store = build_store
      @reference = Redis.new(url: @servers[:reference].url, timeout: 10)
      @readers = @servers.transform_values do |server|
        Snapshot::DATABASES.to_h { |db| [db, Redis.new(url: server.url(db), timeout: 10)] }
      end
    end

    def build_store
      source = lambda do |flag|
        dual = flag.to_s.start_with?("use_primary_and_secondary")
        raise "flag store not ready" if dual && @mechanism == :raise && !@flags[:dual]

        value = dual ? @flags[:dual] : @flags[:primary_default]
        @mechanism == :env ? !value : value # the ENV override wins over the source
      end
      options = ->(role) { { url: @servers[role].url, timeout: TIMEOUT } }
      Gitlab::Redis::MultiStore.new(options.call(:primary), options.call(:secondary), NAME,
                                    feature_flags: source, read_strategy: @read_strategy,
                                    on_error: ->(e, ctx) { @reports << [e.class, ctx[:command_name]] },
                                    breaker_cool_down: 0.3, journal_capacity: 50)
    end

    def default_role = @flags[:primary_default] ? :primary : :secondary
    def non_default_role = default_role == :primary ? :secondary : :primary

    # Runs one step and checks the invariants after it.
    def run(step, index)
      @index = index
      @other_databases_written ||= writes_other_databases?(step)
      deadline = %i[backfill verify backfill_under_load switch].include?(step.kind) ? LONG_STEP_DEADLINE : STEP_DEADLINE
      within(deadline) { send(:"step_#{step.kind}", *step.args) }
      within(STEP_DEADLINE) { check_invariants }
    rescue Failure
      raise
    rescue StandardError => e
      # Whatever escapes a step is a failure of its own: an exception the MultiStore should
      # not have raised, or a check that could not run.
      raise Failure.new(:exception, "#{step.kind}: #{e.class}: #{e.message} (#{e.backtrace&.first(3)&.join(' < ')})", index)
    end

    private

    # A step that selects another database, or moves or copies keys into one.
    def writes_other_databases?(step)
      return step.args.first.to_i != 0 if step.kind == :select

      commands_in(step.args).any? do |command|
        name = command.first.downcase
        %w[move swapdb].include?(name) || (name == "copy" && command.any? { |a| a.to_s.casecmp?("db") })
      end
    end

    # The commands (arrays of strings, name first) anywhere in a step's arguments.
    def commands_in(value)
      return [] unless value.is_a?(Array)
      return [value] if value.first.is_a?(String)

      value.flat_map { |item| commands_in(item) }
    end

    # --- steps -------------------------------------------------------------------------------

    def step_command(args)
      compare(args.first, outcome { @store.call(*args) }, outcome { @reference.call(*args) }, [args])
    end

    def step_pipeline(commands)
      batch(commands, :pipeline, outcome { @store.pipelined { |p| commands.each { |c| p.call(*c) } } },
            outcome { @reference.pipelined { |p| commands.each { |c| p.call(*c) } } })
    end

    def step_multi(commands)
      batch(commands, :multi, outcome { @store.multi { |t| commands.each { |c| t.call(*c) } } },
            outcome { @reference.multi { |t| commands.each { |c| t.call(*c) } } })
    end

    def step_watch_multi(key, commands)
      run_watched = lambda do |client|
        client.watch(key) { client.multi { |t| commands.each { |c| t.call(*c) } } }
      end
      batch(commands, :multi, outcome { run_watched.call(@store) }, outcome { run_watched.call(@reference) })
    end

    # MULTI, each command answered QUEUED (or refused at once), then EXEC.
    def step_blockless_multi(commands)
      run_queued = lambda do |client|
        replies = [client.multi]
        commands.each do |c|
          replies << client.call(*c)
        rescue Redis::CommandError => e
          replies << [:queue_error, e.message]
        end
        replies << client.exec
      end
      batch(commands, :blockless, outcome { run_queued.call(@store) }, outcome { run_queued.call(@reference) })
    end

    def step_blocking(args)
      compare(args.first, outcome { @store.call(*args) }, outcome { @reference.call(*args) }, [args])
    end

    def step_eval(body, keys, argv)
      compare("eval", outcome { @store.eval(body, keys: keys, argv: argv) },
              outcome { @reference.eval(body, keys: keys, argv: argv) }, [])
    end

    def step_select(db)
      compare("select", outcome { @store.select(db) }, outcome { @reference.select(db) }, [])
      @db = db
    end

    def step_publish(channel, message)
      compare("publish", outcome { @store.publish(channel, message) }, outcome { @reference.publish(channel, message) }, [])
    end

    def step_flip(target, mechanism)
      return unless MOVES.fetch(@state).include?(target)
      # The hung store is the non-default one; making it the default would make every call time
      # out, which the reference never does (seed 176328440): the operator waits for it.
      return if @hung && STATES[target][:primary_default] != @flags[:primary_default]
      # Nor while the store about to become the default has its breaker open: behind it, a
      # restart goes unseen until a call reaches the store again (seed 806525136: the old store
      # restarted empty, and the default was rolled back onto it before anything noticed). The
      # status look below probes it once its cool-down is over.
      future_default = STATES[target][:primary_default] ? :primary : :secondary
      return if STATES[target][:primary_default] != @flags[:primary_default] &&
                @store.migration_status[:breaker][future_default] != :closed

      # Before the default store changes, the operator brings a store that missed writes (one
      # that restarted empty, say) in line, as the runbook says: callers are about to read it.
      # A verify covers the database it runs in ("where it differs"), and "full verify needed"
      # is cleared by one in the database the MultiStore is on: so every database the program
      # may have written (SELECT, MOVE, COPY … DB) is verified when the stores may differ there.
      if STATES[target][:primary_default] != @flags[:primary_default] &&
         (@store.migration_status[:full_verify_needed] || @other_databases_written)
        return if @hung

        in_every_database { step_verify_in(@db_in_loop) }
        return if @store.migration_status[:full_verify_needed]
      end
      default_changes = STATES[target][:primary_default] != @flags[:primary_default]
      @state = target
      @mechanism = mechanism == :raise && STATES[target][:dual] ? :callback : mechanism
      @flags = STATES[target].dup
      @synced = [] unless @flags[:dual] # writes reach the default store only
      publish_flags
      settle_resync if default_changes && @flags[:dual] && @hung.nil?
    end

    # A default flipped back while keys it missed wait for re-sync: the MultiStore answers them
    # from the other store (and a write first copies them over), and the re-sync brings the new
    # default in line shortly. The invariants look at the store itself, so they wait for that.
    def settle_resync
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 3
      sleep 0.02 until @store.migration_status[:journal_keys].zero? ||
                       Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    end

    # With the ENV mechanism the MultiStore sees the flags through the environment (which wins
    # over a source that says the opposite): every change of @flags goes there too.
    def publish_flags
      if @mechanism == :env
        ENV[ENV_DUAL] = @flags[:dual].to_s
        ENV[ENV_DEFAULT] = @flags[:primary_default].to_s
      else
        ENV.delete(ENV_DUAL)
        ENV.delete(ENV_DEFAULT)
      end
    end

    # The operator's switch of the default store: only once `migration_status` allows it, after
    # a backfill and a verify with repair if need be. Not allowed, it does not happen.
    def step_switch
      return unless @state == :dual && @hung.nil?

      in_every_database do
        @store.backfill
        step_verify_in(@db_in_loop)
      end
      status = @store.migration_status
      blocking = status[:reasons].reject { |r| r.include?("write failures on the non-default store in the last") }
      return unless blocking.empty?

      differences = stores_differ
      raise Failure.new(:unsafe_switch, "the switch was allowed while #{differences.first(3).join('; ')}", @index) if differences.any?

      @state = :dual_primary
      @flags = STATES[:dual_primary].dup
      publish_flags
    end

    def step_hang
      return if @hung

      @hung = non_default_role
      Process.kill(:STOP, @servers[@hung].pid)
    end

    def step_unhang
      return unless @hung

      resume(@servers[@hung])
      @hung = nil
    end

    def step_restart_non_default
      role = non_default_role
      resume(@servers[role])
      @hung = nil if @hung == role
      @resets_before = @store.migration_status[:store_resets][role]
      @servers[role].restart
      @readers[role].each_value(&:close)
      @restart_unnoticed = role
      @synced = []
    end

    def step_kill_connections(which)
      role = which == :default ? default_role : non_default_role
      return if @hung == role

      killer = @servers[role].client
      killer.call(:client, :kill, :type, :normal, :skipme, :yes)
      killer.close
    end

    # A batch whose reply times out on the default store (a slow script inside it): the caller
    # gets the timeout, and each of its writes ran exactly once, as a single Redis given the
    # batch once.
    def step_slow_batch(kind, key)
      commands = [["INCR", key], ["EVAL", BUSY, "0"], ["INCR", key]]
      run = lambda do |client|
        if kind == :multi
          client.multi { |t| commands.each { |c| t.call(*c) } }
        else
          client.pipelined { |p| commands.each { |c| p.call(*c) } }
        end
      end
      actual = outcome { run.call(@store) }
      expected = outcome { run.call(@reference) }
      sleep 0.5 # whatever was sent has run on the servers
      return if actual == expected || (actual[0] == :error && actual[1].to_s.match?(/Timeout|Connection/))

      raise Failure.new(:reply, "slow #{kind}: MultiStore #{actual.inspect}, reference #{expected.inspect}", @index)
    end

    def step_backfill
      @store.backfill
    rescue Redis::BaseError, Gitlab::Redis::MultiStore::BackfillAfterSwitchError
      nil # a store the operator's backfill could not reach, or the switch made: they see the error
    end

    def step_verify(repair)
      report = @store.verify(repair: repair)
      @synced |= [@db] if repair && report.in_agreement? && @flags[:dual] && @hung.nil? && !@restart_unnoticed
    rescue Redis::BaseError
      nil
    end

    # Every database the program uses (COPY … DB and MOVE reach the other one), the one the
    # MultiStore is on last: a backfill and a verify cover the database they run in.
    def in_every_database
      (Snapshot::DATABASES - [@db] + [@db]).each do |db|
        @store.select(db)
        @db_in_loop = db
        yield
      end
    end

    def step_verify_in(db)
      report = @store.verify(repair: true)
      @synced |= [db] if report.in_agreement? && @flags[:dual] && @hung.nil? && !@restart_unnoticed
    end

    def step_backfill_under_load(commands)
      operator = Thread.new do
        @store.backfill(count: 3)
      rescue Redis::BaseError, Gitlab::Redis::MultiStore::BackfillAfterSwitchError
        nil
      end
      commands.each { |args| step_command(args) }
      operator.join
    end

    # A child forked from this process reads through the inherited MultiStore.
    def step_fork_check(key)
      expected = outcome { @reference.type(key) }
      pid = fork do
        exit!(outcome { @store.type(key) } == expected ? 0 : 1)
      end
      started = monotonic
      status = nil
      sleep 0.005 until (status = Process.wait2(pid, Process::WNOHANG)&.last) || monotonic - started > 10
      unless status
        Process.kill(:KILL, pid)
        Process.wait(pid)
        raise Failure.new(:hang, "a forked child did not finish its first call within 10 s", @index)
      end
      return if status.exitstatus.zero?

      raise Failure.new(:fork, "a forked child read TYPE #{key} differently from the reference (#{expected.inspect})", @index)
    end

    # Threads sharing the MultiStore, each on keys of its own, each compared with the reference.
    # What thread `t` of a threads step runs: the commands on keys of its own, without those
    # that reach every key (patterns, KEYS, SORT … BY).
    def self.thread_commands(commands, t)
      commands.map { |args| args.map { |a| Grammar::KEYS.include?(a) ? "t#{t}:#{a}" : a } }
              .reject { |args| args.any? { |a| Grammar::PATTERNS.include?(a) } || %w[KEYS DBSIZE FLUSHDB SORT SORT_RO].include?(args.first) }
    end

    def step_threads(batches)
      failures = Queue.new
      threads = batches.each_with_index.map do |commands, t|
        Thread.new do
          reference = Redis.new(url: @servers[:reference].url(@db), timeout: 10)
          World.thread_commands(commands, t).each do |args|
            actual = outcome { @store.call(*args) }
            expected = outcome { reference.call(*args) }
            problem = mismatch(args.first, actual, expected)
            failures << "#{args.inspect}: #{problem}" if problem
            adopt([args], reference)
          end
        ensure
          reference&.close
        end
      end
      threads.each(&:join)
      raise Failure.new(:reply, "a thread: #{failures.pop}", @index) unless failures.empty?
    end

    # --- comparing -----------------------------------------------------------------------------

    def outcome
      value = yield
      [:ok, value]
    rescue Hang
      raise
    rescue StandardError => e
      [:error, e.class.name, e.message]
    end

    def compare(name, actual, expected, writes)
      problem = mismatch(name, actual, expected)
      raise Failure.new(:reply, "#{name}: #{problem}", @index) if problem

      adopt(writes, @reference)
    end

    def batch(commands, kind, actual, expected)
      if actual[0] == :ok && expected[0] == :ok && actual[1].is_a?(Array) && expected[1].is_a?(Array)
        compare_replies(commands, kind, actual[1], expected[1])
      elsif actual != expected
        raise Failure.new(:reply, "#{commands.inspect}: MultiStore #{actual.inspect[0, 300]}, reference #{expected.inspect[0, 300]}", @index)
      end
      adopt(commands, @reference)
    end

    # Reply by reply, each by its own command's rules. A block-less MULTI answers MULTI, each
    # QUEUED, then EXEC's array.
    def compare_replies(commands, kind, actual, expected)
      if kind == :blockless && actual.size == expected.size && actual.size == commands.size + 2
        problem = mismatch("multi", [:ok, actual[0..-2]], [:ok, expected[0..-2]])
        raise Failure.new(:reply, "#{commands.inspect} queueing: #{problem}", @index) if problem

        return compare_replies(commands, :pipeline, actual.last, expected.last) if actual.last.is_a?(Array) && expected.last.is_a?(Array)

        actual = [actual.last]
        expected = [expected.last]
        commands = [["exec"]]
      end
      unless actual.size == expected.size
        raise Failure.new(:reply, "#{commands.inspect}: MultiStore #{actual.inspect[0, 300]}, reference #{expected.inspect[0, 300]}", @index)
      end
      actual.zip(expected).each_with_index do |(a, e), i|
        problem = mismatch(commands.dig(i, 0) || "exec", [:ok, a], [:ok, e])
        raise Failure.new(:reply, "#{commands.inspect} reply #{i}: #{problem}", @index) if problem
      end
    end

    def mismatch(name, actual, expected)
      return nil if actual == expected
      return "MultiStore #{actual.inspect[0, 300]}, reference #{expected.inspect[0, 300]}" unless actual[0] == :ok && expected[0] == :ok

      spec = @grammar[name.to_s]
      a = actual[1]
      e = expected[1]
      tolerance = spec && Grammar::TOLERANT[spec.name]
      if tolerance
        # Expiry times: the two servers ran the command a moment apart.
        return nil if a.is_a?(Integer) && e.is_a?(Integer) && a.negative? == e.negative? && (a - e).abs <= tolerance
      elsif spec&.nondeterministic_output?
        return nil
      elsif spec&.unordered_output?
        return nil if deep_sort(a) == deep_sort(e)
      end
      "MultiStore #{a.inspect[0, 300]}, reference #{e.inspect[0, 300]}"
    end

    def deep_sort(value)
      value.is_a?(Array) ? value.map { |v| deep_sort(v) }.sort_by(&:inspect) : value
    end

    # A write whose effect is random (SPOP, XADD *) left the default store in a state the
    # reference cannot reproduce: the reference takes the default store's copy of its keys.
    def adopt(commands, reference)
      commands.each do |args|
        spec = @grammar[args.first.to_s] || @grammar["#{args[0]}|#{args[1]}".downcase]
        next unless spec&.write? && spec.nondeterministic_output?

        keys = begin
          reference.call(:command, :getkeys, *args)
        rescue Redis::CommandError
          []
        end
        source = @readers[default_role][reference_db(reference)]
        keys.each { |key| copy(source, reference, key) }
      end
    end

    def reference_db(reference)
      reference.equal?(@reference) ? @db : reference.connection[:db]
    end

    def copy(source, target, key)
      payload = source.dump(key)
      return target.del(key) unless payload

      at = source.call(:pexpiretime, key)
      target.call(:restore, key, at.positive? ? at : 0, payload, "REPLACE", *(at.positive? ? ["ABSTTL"] : []))
    end

    # --- invariants ----------------------------------------------------------------------------

    def check_invariants
      # Asked before the snapshots: what it says is pending (a re-sync, a command in doubt
      # that may still land) cannot land between a snapshot and the verdict about it.
      status = @store.migration_status
      snapshots = @servers.keys.reject { |role| role == @hung }.to_h do |role|
        [role, Snapshot.of(@readers[role])]
      end
      @checks[:steps] += 1
      differences = Snapshot.differences(snapshots[default_role], snapshots[:reference], "default store", "reference")
      if differences.any?
        raise Failure.new(:default_differs, "the default (#{default_role}) store differs from a single Redis: " \
                                            "#{differences.first(3).join('; ')}", @index)
      end
      @checks[:default_equal] += 1
      notice_restart(status)
      both = snapshots[:primary] && snapshots[:secondary]
      if status[:safe_to_switch] && both
        # The verdict is about the database the MultiStore is on (where its verify ran).
        lines = in_db(Snapshot.differences(snapshots[:primary], snapshots[:secondary], "primary", "secondary"), @db)
        raise Failure.new(:unsafe_status, "safe_to_switch while #{lines.first(3).join('; ')}", @index) if lines.any?

        @checks[:safe_verified] += 1
      end
      # A full verify needed means the stores may differ in any database (a SELECT made the
      # MultiStore forget keys journaled in another one, seed 715219621); a verify then vouches
      # for the database it ran in only ("where it differs"), so each is synced again on its own.
      @synced = [] if status[:full_verify_needed]
      return unless both && @synced.any? && @flags[:dual] && !@restart_unnoticed && status[:journal_keys].zero? &&
                    !status[:full_verify_needed] && status[:requests_in_doubt].values.all?(&:zero?)

      lines = Snapshot.differences(snapshots[:primary], snapshots[:secondary], "primary", "secondary")
      lines = @synced.flat_map { |db| in_db(lines, db) }
      raise Failure.new(:stores_differ, "dual-write on, nothing pending, yet #{lines.first(3).join('; ')}", @index) if lines.any?

      @checks[:stores_equal] += 1
    end

    def stores_differ
      in_db(Snapshot.differences(Snapshot.of(@readers[:primary]), Snapshot.of(@readers[:secondary]), "primary", "secondary"), @db)
    end

    def in_db(lines, db) = lines.select { |line| line.start_with?("db#{db} ") }

    def notice_restart(status)
      return unless @restart_unnoticed
      return unless status[:store_resets][@restart_unnoticed] > @resets_before || status[:full_verify_needed]

      @restart_unnoticed = false
    end

    # --- time ----------------------------------------------------------------------------------

    def within(seconds)
      @deadline = monotonic + seconds
      yield
    rescue Hang
      raise Failure.new(:hang, "a step did not finish within #{seconds} s", @index)
    ensure
      @deadline = nil
    end

    # Interrupts a step that outlives its deadline; a process stuck beyond interrupting ends.
    def watch
      loop do
        sleep 0.1
        deadline = @deadline
        next unless deadline && monotonic > deadline

        @main.raise(Hang)
        sleep 5
        next unless @deadline && monotonic > deadline + 5

        warn "fuzz: step #{@index} hung and could not be interrupted"
        Thread.list.each { |t| warn t.backtrace&.first(8)&.join("\n  ") }
        exit!(3)
      end
    end

    def resume(server)
      Process.kill(:CONT, server.pid) if server.pid
    rescue Errno::ESRCH
      nil
    end

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
