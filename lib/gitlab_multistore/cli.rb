# frozen_string_literal: true

require "optparse"
require "json"
require "uri"

module GitlabMultistore
  # `gitlab-multistore`: backfill and verify two stores from the command line, and the demo.
  # Exit status: 0 on success (for verify: only when the stores agree), 1 when the work found
  # a problem (failed copies, stores that disagree), 2 for a usage error.
  class CLI
    USAGE = <<~TEXT
      Usage: gitlab-multistore COMMAND [options]

      Commands:
        backfill  copy the keys the primary lacks from the secondary (safe while traffic flows)
        verify    compare the stores key by key; exit 0 only when they agree
        status    verify, then print whether switching the default is safe, and why not
        demo      start two throw-away redis-servers and walk through a whole migration
                  (--cluster: the new store is a throw-away 3-master Redis Cluster; --quick;
                  --metrics-port N: serve /metrics for a Prometheus while it runs)

      Options for backfill and verify:
    TEXT

    def initialize(out: $stdout, err: $stderr, tty: nil)
      @out = out
      @err = err
      @tty = tty.nil? ? out.respond_to?(:tty?) && out.tty? : tty
    end

    def run(argv)
      command = argv.shift
      case command
      when "backfill", "verify" then migrate(command, argv)
      when "status" then status(argv)
      when "demo" then demo(argv)
      when nil, "-h", "--help", "help"
        @out.puts(USAGE + parser({}).summarize.join)
        0
      else
        @err.puts "gitlab-multistore: unknown command #{command.inspect} (try --help)"
        2
      end
    rescue OptionParser::ParseError, ArgumentError => e
      @err.puts "gitlab-multistore: #{e.message}"
      2
    rescue URI::Error => e
      @err.puts "gitlab-multistore: invalid URL (#{redact(e.message)})"
      2
    rescue ::Redis::BaseError => e
      @err.puts "gitlab-multistore: #{e.class}: #{redact(e.message)}"
      1
    end

    # Messages can quote a URL; never print its password.
    def redact(text) = Gitlab::Redis::Wrapper.redact_text(text)

    private

    def parser(options)
      OptionParser.new do |o|
        o.on("--primary URL", "the new store (redis://, unix://; URL,URL,… for a Redis Cluster's nodes)") do |v|
          options[:primary] = store_argument(v)
        end
        o.on("--secondary URL", "the store the data lives on today (same forms)") do |v|
          options[:secondary] = store_argument(v)
        end
        o.on("--match GLOB", "only keys matching this pattern") { |v| options[:match] = v }
        o.on("--count N", Integer, "keys per SCAN page (default 1000)") { |v| options[:count] = v }
        o.on("--rate N", Float, "backfill: at most N keys per second") { |v| options[:rate] = v }
        o.on("--max-latency-ms N", Float, "backfill: wait while the secondary's ping takes longer than N ms") do |v|
          options[:max_latency] = v / 1000.0
        end
        o.on("--checkpoint FILE", "backfill, verify: save the progress to FILE after every page (removed when done)") do |v|
          options[:checkpoint] = v
        end
        o.on("--resume", "backfill, verify: continue from the --checkpoint FILE of one that was stopped") do
          options[:resume] = true
        end
        o.on("--sample N", Integer, "verify: check N random keys instead of all") { |v| options[:sample] = v }
        o.on("--repair", "verify: copy differing keys from the default store (see --default)") { options[:repair] = true }
        o.on("--default STORE", %w[primary secondary],
             "the store callers are answered from: secondary (default) until the switch, then primary") do |v|
          options[:default] = v
        end
        o.on("--json", "print the final report as JSON") { options[:json] = true }
        o.on("--metrics-port N", Integer, "serve /metrics (Prometheus) on this port while running, with progress gauges") do |v|
          options[:metrics_port] = v
        end
      end
    end

    # A comma-separated list names a Redis Cluster's nodes (a trailing comma makes one URL a
    # cluster); commas cannot otherwise appear in a Redis URL's host.
    def store_argument(value)
      value.include?(",") ? value.split(",").reject(&:empty?) : value
    end

    def migrate(command, argv)
      options = { count: 1000 }
      parser(options).parse!(argv)
      raise ArgumentError, "--primary and --secondary are required" unless options[:primary] && options[:secondary]

      store = multi_store(options)
      metrics = metrics_server(options)
      progress = Progress.new(@err, tty: @tty, label: command)
      on_progress = lambda do |p|
        progress.update(p)
        metrics&.progress(command, p)
      end
      report =
        if command == "backfill"
          store.backfill(match: options[:match], count: options[:count], rate: options[:rate],
                         checkpoint: options[:checkpoint], resume: options[:resume] ? true : false,
                         max_latency: options[:max_latency], &on_progress)
        else
          store.verify(match: options[:match], count: options[:count], sample: options[:sample],
                       repair: options[:repair], checkpoint: options[:checkpoint],
                       resume: options[:resume] ? true : false, &on_progress)
        end
      metrics&.progress(command, report)
      progress.finish
      print_report(command, report, json: options[:json])
      success = command == "backfill" ? report.ok? : report.in_agreement?
      success ? 0 : 1
    ensure
      metrics&.close
      store&.close
    end

    def metrics_server(options)
      return unless options[:metrics_port]

      require "gitlab_multistore/metrics_server"
      MetricsServer.new(port: options[:metrics_port]).tap do |server|
        @err.puts "metrics: http://127.0.0.1:#{server.port}/metrics"
      end
    end

    def status(argv)
      options = { count: 1000 }
      parser(options).parse!(argv)
      raise ArgumentError, "--primary and --secondary are required" unless options[:primary] && options[:secondary]

      store = multi_store(options)
      metrics = metrics_server(options)
      progress = Progress.new(@err, tty: @tty, label: "verify")
      report = store.verify(match: options[:match], count: options[:count], repair: options[:repair]) do |p|
        progress.update(p)
        metrics&.progress("verify", p)
      end
      metrics&.progress("verify", report)
      progress.finish
      status = store.migration_status
      if options[:json]
        @out.puts JSON.generate(status.merge(command: "status"))
      else
        @out.puts "safe to switch the default: #{status[:safe_to_switch] ? 'yes' : 'no'}"
        status[:reasons].each { |reason| @out.puts "  - #{reason}" }
        @out.puts format("  last verify: readiness %.2f%%", status[:last_verify][:readiness]) if status[:last_verify]
      end
      status[:safe_to_switch] ? 0 : 1
    ensure
      metrics&.close
      store&.close
    end

    # The command line sends no application traffic: its flags describe the migration as the
    # application runs it -- dual-write on (so a verify here can vouch for the stores), the
    # secondary the default store unless --default says the switch has happened (it decides
    # where `--repair` copies from).
    def multi_store(options)
      primary_default = options[:default] == "primary"
      flags = lambda do |flag|
        flag.to_s.start_with?("use_primary_and_secondary") || (primary_default && flag.to_s.start_with?("use_primary_store"))
      end
      Gitlab::Redis::MultiStore.new(options[:primary], options[:secondary], "gitlab_multistore_cli", feature_flags: flags)
    end

    def print_report(command, report, json:)
      fields = report.to_h.merge(rate: report.rate.round(1))
      if json
        @out.puts JSON.generate(fields.merge(command: command))
      elsif command == "backfill"
        @out.puts format("backfill: scanned %<scanned>d, copied %<copied>d, already present %<already_present>d, " \
                         "expired %<expired>d, failed %<failed>d, undone %<undone>d in %<elapsed>.1fs (%<rate>.0f keys/s)",
                         fields)
      else
        @out.puts format("verify: checked %<checked>d, agree %<agree>d, missing on primary %<missing_on_primary>d, " \
                         "different %<different>d, only on primary %<only_on_primary>d, repaired %<repaired>d, " \
                         "readiness %<readiness>.2f%% -- %<verdict>s",
                         fields.merge(verdict: report.in_agreement? ? "the stores agree" : "the stores DISAGREE"))
      end
    end

    def demo(argv)
      require "gitlab_multistore/demo"
      options = {}
      OptionParser.new do |o|
        o.on("--quick") { options[:quick] = true }
        o.on("--cluster") { options[:cluster] = true }
        o.on("--metrics-port N", Integer) { |v| options[:metrics_port] = v }
      end.parse!(argv)
      metrics = metrics_server(options)
      Demo.new(@out, quick: options[:quick], cluster: options[:cluster], metrics: metrics).run ? 0 : 1
    ensure
      metrics&.close
    end

    # A progress bar on a terminal; elsewhere (logs, CI) a plain line per 10 %.
    class Progress
      WIDTH = 30

      def initialize(io, tty:, label:)
        @io = io
        @tty = tty
        @label = label
        @last_decile = -1
      end

      def update(progress)
        holding = progress.respond_to?(:holding_back) && progress.holding_back
        if @tty
          filled = (progress.fraction * WIDTH).round
          eta = progress.eta ? format("%ds", progress.eta.ceil) : "?"
          @io.print format("\r%s [%s%s] %d/%d keys, %.0f keys/s, ETA %s %s", @label, "#" * filled, " " * (WIDTH - filled),
                           progress.scanned, progress.total, progress.rate, eta,
                           holding ? "(holding back: the secondary is slow) " : "")
        else
          decile = (progress.fraction * 10).floor
          if holding && !@said_holding
            @io.puts "#{@label}: holding back -- the secondary answers slower than --max-latency-ms"
          end
          @said_holding = holding
          return if decile == @last_decile

          @last_decile = decile
          @io.puts format("%s: %d%% (%d/%d keys, %.0f keys/s)", @label, decile * 10, progress.scanned, progress.total,
                          progress.rate)
        end
      end

      def finish
        @io.puts if @tty
      end
    end
  end
end
