# frozen_string_literal: true

require "gitlab_multistore/metrics_server"
require "json"
require "net/http"
require "tmpdir"
require "yaml"

# The shipped rules and dashboard against a real Prometheus (Debian's `prometheus`) scraping a
# MultiStore through the metrics server while a migration goes through what they watch: traffic,
# fallbacks, a hung new store (write failures, the breaker, a journal overflow), a restart, a
# command missing from the table, a pipeline difference, a backfill and a verify.
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

  def start_prometheus(dir, target)
    port = RedisServers.free_port
    config = File.join(dir, "prometheus.yml")
    File.write(config, YAML.dump(
                         "global" => { "scrape_interval" => "1s", "evaluation_interval" => "1s" },
                         "rule_files" => [RULES],
                         "scrape_configs" => [{ "job_name" => "gitlab_multistore",
                                                "static_configs" => [{ "targets" => [target] }] }]
                       ))
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
end
