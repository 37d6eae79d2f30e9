# frozen_string_literal: true

module MultistoreFuzz
  # One step of a fuzz program. `kind` says what it does; `args` holds its data, all plain
  # values, so a program prints as Ruby and replays exactly.
  Step = Struct.new(:kind, :args) do
    def to_s
      "#{kind} #{args.inspect}"
    end
  end

  # The flag states of the runbook, and which moves between them an operator makes (rollbacks
  # included). Switching the default to the primary is an operator step of its own: it happens
  # only once `migration_status` says it is safe (after a backfill and a verify with repair).
  STATES = {
    off: { dual: false, primary_default: false },
    dual: { dual: true, primary_default: false },
    dual_primary: { dual: true, primary_default: true },
    primary_only: { dual: false, primary_default: true }
  }.freeze
  MOVES = {
    off: %i[dual],
    dual: %i[off],
    dual_primary: %i[dual primary_only],
    primary_only: %i[dual_primary]
  }.freeze

  # A seeded sequence of steps: commands of every data type (alone, pipelined, in MULTI, under
  # WATCH, in a block-less MULTI), blocking pops with short timeouts, scripts, SELECT, flag
  # flips, faults of the non-default store, operator work (backfill, verify, the switch), forks
  # and thread bursts. The same seed and length give the same program, whatever happens when it
  # runs: nothing here looks at replies.
  class Program
    SCRIPTS = [
      ["return redis.call('INCR', KEYS[1])", 1],
      ["redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])", 1],
      ["return redis.call('LPUSH', KEYS[1], ARGV[1], ARGV[1])", 1],
      ["return redis.error_reply('custom failure')", 0],
      ["return {KEYS[1], redis.call('EXISTS', KEYS[1]), tonumber(ARGV[1])}", 1]
    ].freeze
    CHANNELS = %w[news alerts].freeze

    attr_reader :steps, :seed, :read_strategy

    def initialize(grammar, seed:, length:)
      @grammar = grammar
      @seed = seed
      @random = Random.new(seed)
      @read_strategy = @random.rand < 0.75 ? :primary_with_fallback : :default_only
      @state = :off
      @hung = 0
      @steps = []
      @steps << next_step while @steps.size < length
    end

    private

    def next_step
      return unhang if @hung == 1

      @hung -= 1 if @hung.positive?
      roll = @random.rand
      case roll
      when 0...0.50 then Step.new(:command, [command])
      when 0.50...0.62 then Step.new(:pipeline, [Array.new(@random.rand(1..5)) { command }])
      when 0.62...0.68 then Step.new(:multi, [Array.new(@random.rand(1..4)) { command }])
      when 0.68...0.71 then Step.new(:watch_multi, [Grammar::KEYS.sample(random: @random), Array.new(@random.rand(1..3)) { command }])
      when 0.71...0.74 then Step.new(:blockless_multi, [Array.new(@random.rand(1..3)) { command }])
      when 0.74...0.78 then Step.new(:blocking, [@grammar.generate_blocking(@random)])
      when 0.78...0.81 then script
      when 0.81...0.82 then Step.new(:select, [@random.rand(0..1)])
      when 0.82...0.84 then Step.new(:publish, [CHANNELS.sample(random: @random), "m#{@random.rand(100)}"])
      when 0.84...0.87 then flip
      when 0.87...0.91 then fault
      when 0.91...0.95 then operator
      when 0.95...0.97 then Step.new(:fork_check, [Grammar::KEYS.sample(random: @random)])
      else Step.new(:threads, [Array.new(3) { Array.new(8) { command } }])
      end
    end

    def command
      @grammar.generate(@random)
    end

    def script
      body, numkeys = SCRIPTS.sample(random: @random)
      keys = Array.new(numkeys) { Grammar::KEYS.sample(random: @random) }
      Step.new(:eval, [body, keys, [Grammar::VALUES.sample(random: @random)]])
    end

    # A flip of the flags, by the flag source, an ENV override, or a flag source that raises
    # (which counts as off).
    def flip
      target = MOVES.fetch(@state).sample(random: @random)
      return Step.new(:command, [command]) unless target

      @state = target
      Step.new(:flip, [target, %i[callback callback env raise].sample(random: @random)])
    end

    # Faults hit the store that is not the default: its failures must never reach callers.
    def fault
      case @random.rand(5)
      when 0
        return Step.new(:command, [command]) if @hung.positive?

        @hung = @random.rand(3..8)
        Step.new(:hang, [])
      when 1 then Step.new(:restart_non_default, [])
      when 2 then Step.new(:kill_connections, [%i[default non_default].sample(random: @random)])
      when 3 then Step.new(:slow_batch, [%i[pipeline multi].sample(random: @random), Grammar::KEYS.sample(random: @random)])
      else Step.new(:kill_connections, [:non_default])
      end
    end

    def unhang
      @hung = 0
      Step.new(:unhang, [])
    end

    def operator
      case @random.rand(4)
      when 0 then Step.new(:backfill, [])
      when 1 then Step.new(:verify, [@random.rand < 0.5])
      when 2 then Step.new(:backfill_under_load, [Array.new(6) { command }])
      else
        return Step.new(:verify, [true]) unless @state == :dual

        @state = :dual_primary
        Step.new(:switch, [])
      end
    end
  end
end
