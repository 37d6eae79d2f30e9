# frozen_string_literal: true

require "gitlab_multistore/metrics_server"
require "gitlab_multistore/prometheus_config"
require "json"
require "net/http"
require "tmpdir"
require "fileutils"
require "yaml"

# The shipped rules and dashboard against a real Prometheus (Debian's `prometheus`) scraping a
# MultiStore through the metrics server while a migration goes through what they watch: traffic,
# fallbacks, a hung new store (write failures, the breaker, a journal overflow), a restart, a
# command missing from the table, a pipeline difference, a backfill and a verify. Then the
# demo itself, run as `gitlab-multistore demo --metrics-port`, whose new store hangs: the alerts
# for it fire in Prometheus while it hangs.
RSpec.describe "Prometheus rules and dashboard" do
  PROMETHEUS = "/usr/bin/prometheus"
  ROOT = File.expand_path("../..", __dir__)
  RULES = File.join(ROOT, "prometheus", "gitlab_multistore.rules.yml")
  DASHBOARD = File.join(ROOT, "prometheus", "gitlab_multistore.dashboard.json")

  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:instance_name) { "watched" }

  def query(port, expr)
    uri = URI("http://127.0.0.1:#{port}/api/v1/query")
    uri.query = URI.encode_www_form(query: expr)
    JSON.parse(Net::HTTP.get(uri))
  end

  def start_prometheus(dir, target, rules: RULES, interval: "1s")
    port = RedisServers.free_port
    config = GitlabMultistore::PrometheusConfig.write(dir, target: target, rules: rules, interval: interval)
    pid = Process.spawn(PROMETHEUS, "--config.file=#{config}", "--storage.tsdb.path=#{File.join(dir, 'data')}",
                        "--web.listen-address=127.0.0.1:#{port}", out: File::NULL, err: File.join(dir, "prometheus.log"))
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
    until (Net::HTTP.get_response(URI("http://127.0.0.1:#{port}/-/ready")).code == "200" rescue false)
      raise "prometheus did not start: #{File.read(File.join(dir, 'prometheus.log'))[-2000..]}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.2
    end
    [pid, port]
  end

  def new_store = @new_store ||= dedicated_redis_server

  def multi_store
    @multi_store ||= Gitlab::Redis::MultiStore.new({ url: new_store.url, timeout: 0.2 }, secondary_server.url, instance_name,
                                                   feature_flags: flags, on_error: ->(_e, _c) {}, journal_capacity: 2,
                                                   breaker_cool_down: 1)
  end

  # Runs what the rules and the dashboard watch, through one MultiStore whose new store hangs
  # and restarts.
  def drive_a_migration(metrics)
    store = multi_store
    flags.enable(:"use_primary_and_secondary_stores_for_#{instance_name}")
    secondary_server.client.set("only-old", "v")
    20.times { |i| store.set("k#{i}", i.to_s) }
    store.get("only-old") # a fallback
    new_store.client.set("counter", 5)
    store.pipelined { |p| p.incr("counter") } # answered differently
    store.call("NOT.A.COMMAND") rescue Redis::CommandError # rubocop:disable Style/RescueModifier
    store.backfill { |progress| metrics.progress("backfill", progress) }.then { |r| metrics.progress("backfill", r) }
    store.verify { |progress| metrics.progress("verify", progress) }.then { |r| metrics.progress("verify", r) }
    Process.kill(:STOP, new_store.pid)
    begin
      10.times { |i| store.set("while-hung-#{i}", i.to_s) } # failures, the breaker opens, the journal overflows
    ensure
      Process.kill(:CONT, new_store.pid)
    end
    new_store.restart
    sleep 1.2 # the breaker's cool-down: the next write reaches the restarted store, which has a new run_id
    store.set("after", "1")
    store
  end

  it "evaluates every rule without error, and every recording rule, alert condition and dashboard query returns series" do
    raise "#{PROMETHEUS} is missing: install Debian's prometheus package (bin/test does)" unless File.executable?(PROMETHEUS)

    metrics = GitlabMultistore::MetricsServer.new(port: 0)
    Dir.mktmpdir("gitlab-multistore-prometheus-") do |dir|
      multi_store # its series exist from now on, at 0
      pid, port = start_prometheus(dir, "127.0.0.1:#{metrics.port}")
      begin
        # Scraped at 0 before anything happens, as in an application that ran for a while.
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
        sleep 0.2 until query(port, %(gitlab_redis_multi_store_journal_overflow_total{instance_name="#{instance_name}"}))
                        .dig("data", "result")&.any? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        sleep 1.5
        store = drive_a_migration(metrics)
        traffic = Thread.new { 200.times { |i| store.get("k#{i % 20}"); sleep 0.02 } }
        sleep 6 # scrapes every second; rates need two samples, rules a few evaluations
        traffic.join

        rules = JSON.parse(Net::HTTP.get(URI("http://127.0.0.1:#{port}/api/v1/rules"))).dig("data", "groups").flat_map { |g| g["rules"] }
        recorded = rules.select { |r| r["type"] == "recording" }.map { |r| r["name"] }
        alerts = rules.select { |r| r["type"] == "alerting" }
        dashboard = JSON.parse(File.read(DASHBOARD))
        panel_queries = dashboard["panels"].flat_map { |p| p["targets"].map { |t| t["expr"].gsub("$instance_name", instance_name) } }
        firing = query(port, 'ALERTS{alertstate=~"firing|pending"}').dig("data", "result").map { |r| r["metric"]["alertname"] }.uniq

        aggregate_failures do
          expect(rules.map { |r| [r["name"], r["health"], r["lastError"].to_s] }.reject { |_, health, _| health == "ok" }).to eq([])
          expect(recorded.size).to eq(7)
          recorded.each { |name| expect([name, query(port, name).dig("data", "result")]).not_to match([name, []]) }
          # Quiet when healthy, but each condition this run produced holds now: the alerts whose
          # `for` has not passed yet are pending, the others firing.
          expect(firing).to include("MultiStoreNonDefaultWritesFailing", "MultiStoreBreakerOpen", "MultiStoreJournalOverflowed",
                                    "MultiStoreStoreReset", "MultiStoreMethodMissing", "MultiStorePipelinedDiff")
          expect(alerts.map { |a| a["name"] } - firing).to contain_exactly("MultiStoreJournalGrowing", "MultiStoreReadFallbacksNotFalling")
          panel_queries.each do |expr|
            result = query(port, expr)
            expect([expr, result["status"]]).to eq([expr, "success"])
            expect([expr, result.dig("data", "result")]).not_to match([expr, []])
          end
        end
      ensure
        Process.kill(:TERM, pid)
        Process.wait(pid)
      end
    end
  ensure
    metrics&.close
  end

  describe "the demo's hung new store" do
    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    # The alerts Prometheus has now, by state: { "firing" => [names], "pending" => [names] }.
    def alerts(port)
      JSON.parse(Net::HTTP.get(URI("http://127.0.0.1:#{port}/api/v1/alerts"))).dig("data", "alerts")
          .group_by { |a| a["state"] }.transform_values { |list| list.map { |a| a.dig("labels", "alertname") }.uniq }
    end

    def alert_exprs(path)
      YAML.safe_load_file(path)["groups"].flat_map { |g| g["rules"] }.to_h { |r| [r["alert"] || r["record"], r["expr"]] }
    end

    # Raised by a new store that hangs: its writes time out, the breaker skips it, the journal
    # fills (over 1,000 keys: the demo's workers write 2,200) while nothing drains it.
    HUNG_STORE_ALERTS = %w[MultiStoreNonDefaultWritesFailing MultiStoreBreakerOpen MultiStoreJournalGrowing].freeze
    # A hang loses nothing the journal cannot hold, restarts nothing, and sends no unknown command.
    NEVER_IN_THE_DEMO = %w[MultiStoreJournalOverflowed MultiStoreStoreReset MultiStoreMethodMissing].freeze

    it "fires the hung-store alerts while the new store hangs, and never those of lost writes, restarts or unknown commands" do
      raise "#{PROMETHEUS} is missing: install Debian's prometheus package (bin/test does)" unless File.executable?(PROMETHEUS)

      Dir.mktmpdir("gitlab-multistore-prometheus-demo-") do |dir|
        # The shipped rules with every alert's `for:` set to 0s, and nothing else changed: the
        # shipped durations (minutes) outlast a 4-second hang, which would leave them pending.
        rules = GitlabMultistore::PrometheusConfig.rules_with_hold(File.join(dir, "rules.yml"))
        expect(alert_exprs(rules)).to eq(alert_exprs(RULES))
        metrics_port = RedisServers.free_port
        pid, port = start_prometheus(dir, "127.0.0.1:#{metrics_port}", rules: rules, interval: "500ms")
        begin
          # Prometheus hands new targets to its scrapers up to 5 s after it is ready: the demo
          # starts once the first scrape (of nothing yet, up == 0) is in.
          deadline = monotonic + 20
          sleep 0.2 until query(port, "up").dig("data", "result")&.any? || monotonic > deadline
          demo = IO.popen([RbConfig.ruby, "-I", File.join(ROOT, "lib"), File.join(ROOT, "exe", "gitlab-multistore"),
                           "demo", "--quick", "--metrics-port", metrics_port.to_s], err: %i[child out])
          lines = Queue.new
          reader = Thread.new do
            demo.each_line { |line| lines << [monotonic, line] }
            lines << [monotonic, nil]
          end
          output = +""
          stopped = resumed = ended = nil
          firing = {} # alertname => [first, last] monotonic time seen firing
          pending = []
          deadline = monotonic + 120
          until ended
            raise "the demo did not end within 120 s:\n#{output}" if monotonic > deadline

            until lines.empty?
              at, line = lines.pop
              next ended = at if line.nil?

              output << line
              stopped ||= at if line.include?("SIGSTOP sent")
              resumed ||= at if line.include?("SIGCONT sent")
            end
            now = monotonic
            states = alerts(port)
            states.fetch("firing", []).each { |name| (firing[name] ||= [now, now])[1] = now }
            pending |= states.fetch("pending", [])
            sleep 0.2
          end
          reader.join
          demo.close
          status = Process.last_status
          journal = query(port, 'gitlab_redis_multi_store_journal_keys{instance_name="demo_sessions"}[5m]')
                    .dig("data", "result", 0, "values")&.map { |_, v| v.to_i } || []
          raise "the demo did not hang its new store (#{status.inspect}):\n#{output}" unless stopped && resumed

          at = ->(time) { format("%+.1f s", time - stopped) }
          puts "", "[prometheus] the demo's new store hung from #{at.call(stopped)} to #{at.call(resumed)} (SIGSTOP .. SIGCONT)"
          firing.sort_by { |_, (first, _)| first }.each do |name, (first, last)|
            puts "[prometheus] #{name} firing from #{at.call(first)} to #{at.call(last)}"
          end
          puts "[prometheus] never firing: #{(alert_exprs(RULES).keys.grep(/\AMultiStore/) - firing.keys).join(', ')}"
          puts "[prometheus] journal as scraped: peak #{journal.max} keys, #{journal.last} at the demo's end"

          aggregate_failures do
            expect(status).to be_success, output
            expect(output).to include("Back in line", "errors seen by callers: 0", "keys lost: 0")
            HUNG_STORE_ALERTS.each do |name|
              expect([name, firing[name]&.first]).to match([name, be_between(stopped, resumed)])
            end
            expect(firing.keys & NEVER_IN_THE_DEMO).to eq([])
            expect(pending).to eq([]) # `for: 0s`: an alert fires as soon as its condition holds
            # The re-sync emptied the journal before the demo ended, as Prometheus saw it.
            expect(journal.max).to be > 1000
            expect(journal.last).to eq(0)
          end
        ensure
          # A failure above leaves the demo running: TERM runs its ensure, which stops its servers.
          if demo && !demo.closed?
            Process.kill(:TERM, demo.pid)
            demo.close
          end
          Process.kill(:TERM, pid)
          Process.wait(pid)
          # What the demo leaves for its user: its metrics, its picture, a Prometheus configuration.
          [output.to_s[/metrics written to (\S+)/, 1], output.to_s[/open it in a browser\): (\S+)/, 1]]
            .compact.each { |file| FileUtils.rm_f(file) }
          FileUtils.rm_rf(File.join(Dir.tmpdir, "gitlab-multistore-demo-prometheus-#{metrics_port}")) if metrics_port
        end
      end
    end
  end
end
