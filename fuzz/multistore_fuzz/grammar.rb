# frozen_string_literal: true

module MultistoreFuzz
  # Every data command Redis itself describes (COMMAND INFO for flags and tips, COMMAND DOCS for
  # the argument grammar -- the source the core's command table is generated from), turned into
  # generators of typed, mostly valid argument lists over a small key space, so that commands
  # keep colliding on the same keys and types.
  class Grammar
    DATA_GROUPS = %w[string list set sorted-set hash stream hyperloglog geo bitmap generic].freeze
    # Commands the sequence must not contain: they answer with what differs by nature between
    # two servers (cursors, random keys, idle times, the clock, the encoding a copied key got:
    # RESTORE re-encodes a "raw" string as "embstr"), block on purpose, or reach outside the
    # store. Blocking commands and scripts have steps of their own.
    EXCLUDED = %w[
      scan sscan hscan zscan randomkey wait waitaof migrate restore-asking object|freq object|idletime
      object|help object|refcount object|encoding pfdebug pfselftest xgroup|help xinfo|help xinfo|consumers
    ].freeze
    # Time-dependent answers compared within a tolerance (milliseconds or seconds).
    TOLERANT = { "ttl" => 2, "pttl" => 2000, "expiretime" => 2, "pexpiretime" => 2000 }.freeze

    KEYS = Array.new(8) { |i| "k#{i}" }.freeze
    VALUES = ["a", "b", "c", "1", "2", "-1", "10", "1.5", "", "x" * 20, "\x00\xFF".b].freeze
    MEMBERS = %w[a b c d e 1 2].freeze
    PATTERNS = ["*", "k*", "k[0-3]", "?1", "a*"].freeze
    STREAM_IDS = %w[0-1 1-1 2-0 2-1 5-0 0 $ > + - *].freeze
    GROUPS = %w[g1 g2].freeze
    CONSUMERS = %w[c1 c2].freeze
    SCORES = %w[0 1 2.5 -1 3 +inf -inf].freeze
    # Absolute times far in the past (the key expires at once) or the future, so two servers
    # given the same command end up the same whatever the clock.
    UNIX_SECONDS = %w[1000000000 4000000000].freeze
    UNIX_MILLISECONDS = %w[1000000000000 4000000000000].freeze

    Command = Struct.new(:name, :flags, :tips, :arguments, :group, keyword_init: true) do
      def write? = flags.include?("write")
      def blocking? = flags.include?("blocking")

      # An answer that differs between two servers holding the same data (TTL, SPOP …).
      def nondeterministic_output? = tips.include?("nondeterministic_output")

      # An answer whose order is the server's own (SMEMBERS, HGETALL …).
      def unordered_output? = tips.include?("nondeterministic_output_order")
    end

    attr_reader :commands, :blocking

    def initialize(client)
      info = client.call(:command, :info)
      flags = {}
      tips = {}
      collect = lambda do |entry|
        flags[entry[0]] = entry[2]
        tips[entry[0]] = Array(entry[7])
        Array(entry[9]).each { |sub| collect.call(sub) }
      end
      info.each { |entry| collect.call(entry) }
      @commands = []
      client.call(:command, :docs).each_slice(2) do |name, doc|
        doc = doc.each_slice(2).to_h
        next unless DATA_GROUPS.include?(doc["group"])

        entries = doc["subcommands"] ? doc["subcommands"].each_slice(2).to_a : [[name, doc]]
        entries.each do |full, sub|
          sub = sub.is_a?(Hash) ? sub : sub.each_slice(2).to_h
          next if EXCLUDED.include?(full)

          @commands << Command.new(name: full, flags: flags.fetch(full, []), tips: tips.fetch(full, []),
                                   arguments: Array(sub["arguments"]).map { |a| argument(a) }, group: doc["group"])
        end
      end
      @commands.sort_by!(&:name)
      @blocking = @commands.select(&:blocking?).reject { |c| c.name.start_with?("xread") }
      # XREAD and XREADGROUP block only with BLOCK, which is given a short wait here.
      @plain = @commands.reject { |c| c.blocking? && !c.name.start_with?("xread") }
      @by_name = @commands.to_h { |c| [c.name, c] }
    end

    def [](name)
      @by_name[name.to_s.downcase]
    end

    # One command's arguments (name first), from `random`.
    def generate(random, command = @plain.sample(random: random))
      words = command.name.split("|").map(&:upcase)
      args = []
      command.arguments.each_with_index do |argument, index|
        emit(random, argument, args, command.arguments[index + 1])
      end
      words + deterministic(command, args)
    end

    # The parts of a blocking command with a short timeout.
    def generate_blocking(random)
      command = @blocking.sample(random: random)
      generate(random, command).map { |arg| arg == TIMEOUT_MARK ? "0.02" : arg }
    end

    TIMEOUT_MARK = "\u0000timeout"

    private

    # SORT … BY a pattern that names no key (or BY nosort) leaves the order of a set's members
    # as the server's hash table has them, which differs between two servers: SORT is generated
    # without BY.
    def deterministic(command, args)
      return args unless %w[sort sort_ro].include?(command.name)

      at = args.index { |arg| arg.to_s.casecmp?("BY") }
      at ? args[0...at] + args[(at + 2)..] : args
    end

    def argument(raw)
      raw = raw.each_slice(2).to_h
      {
        name: raw["name"], type: raw["type"], token: raw["token"], flags: Array(raw["flags"]),
        arguments: Array(raw["arguments"]).map { |a| argument(a) }
      }
    end

    def emit(random, arg, out, following = nil)
      return if arg[:flags].include?("optional") && random.rand < 0.5

      if arg[:name] == "numkeys" && following && following[:flags].include?("multiple")
        @pending_count = random.rand(1..3)
        out << @pending_count.to_s
        return
      end
      count = if arg[:flags].include?("multiple")
                @pending_count || random.rand(1..3)
              else
                1
              end
      @pending_count = nil if arg[:flags].include?("multiple")
      count.times do |i|
        out << arg[:token] if arg[:token] && arg[:type] != "pure-token" &&
                              (i.zero? || arg[:flags].include?("multiple_token"))
        next out << "10" if arg[:token] == "BLOCK" # milliseconds: a short wait

        value(random, arg, out)
      end
    end

    def value(random, arg, out)
      case arg[:type]
      when "pure-token" then out << arg[:token]
      when "oneof" then emit(random, arg[:arguments].sample(random: random).merge(flags: []), out)
      when "block" then block(random, arg, out)
      when "key" then out << KEYS.sample(random: random)
      when "pattern" then out << PATTERNS.sample(random: random)
      when "integer" then out << integer(random, arg[:name])
      when "double" then out << double(random, arg[:name])
      when "unix-time" then out << (arg[:name].include?("milli") ? UNIX_MILLISECONDS : UNIX_SECONDS).sample(random: random)
      else out << string(random, arg[:name])
      end
    end

    # A block whose arguments repeat together (XREAD's STREAMS key… id…) repeats them equally.
    def block(random, arg, out)
      repeated = arg[:arguments].count { |a| a[:flags].include?("multiple") }
      count = random.rand(1..3) if repeated > 1
      arg[:arguments].each_with_index do |inner, index|
        @pending_count = count if count && inner[:flags].include?("multiple")
        emit(random, inner, out, arg[:arguments][index + 1])
      end
    end

    def integer(random, name)
      case name
      when "timeout" then TIMEOUT_MARK
      when /count|numkeys|len|threshold|limit/ then random.rand(0..4).to_s
      # Milliseconds first: the name "milliseconds" also matches /seconds/, and a PX of a few
      # thousand would expire while both stores are being compared.
      when /milliseconds|ms/ then random.rand(1_000_000..100_000_000).to_s
      when /seconds/ then random.rand(1000..100_000).to_s
      when /db/ then random.rand(0..1).to_s
      when /bit\z|value/ then random.rand(0..1).to_s
      when /offset|start|end|stop|index|rank|min|max/ then random.rand(-3..6).to_s
      else random.rand(-2..10).to_s
      end
    end

    def double(random, name)
      case name
      when "timeout" then TIMEOUT_MARK
      when "longitude" then format("%.4f", random.rand(-10.0..10.0))
      when "latitude" then format("%.4f", random.rand(-10.0..10.0))
      when /radius|width|height/ then random.rand(1..5000).to_s
      else SCORES.sample(random: random)
      end
    end

    def string(random, name)
      case name
      when /\Aid\z|start|end|min-id|last-id|threshold|entries-read|max-deleted/ then STREAM_IDS.sample(random: random)
      when /group/ then GROUPS.sample(random: random)
      when /consumer/ then CONSUMERS.sample(random: random)
      when /member|field|element|pivot/ then MEMBERS.sample(random: random)
      when /min|max/ then ["-", "+", "[a", "(c", "[b"].sample(random: random)
      when /pattern/ then PATTERNS.sample(random: random)
      when /unit/ then %w[m km].sample(random: random)
      when /operation/ then %w[AND OR XOR NOT].sample(random: random)
      when /encoding/ then %w[u8 i16].sample(random: random)
      when /serialized-value/ then "\x00\x01a\x0a\x00".b
      else VALUES.sample(random: random)
      end
    end
  end
end
