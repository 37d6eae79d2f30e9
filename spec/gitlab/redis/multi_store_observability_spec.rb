# frozen_string_literal: true

require "open3"
require "tmpdir"

# The numbers an operator decides the next migration step with, driven by real traffic and read
# back the way a scraper or the application's own metrics client would.
RSpec.describe Gitlab::Redis::MultiStore, "observability" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:instance_name) { "observed" }
  let(:dual_write) { :use_primary_and_secondary_stores_for_observed }

  subject(:store) do
    described_class.new(primary_server.url, secondary_server.url, instance_name,
                        feature_flags: flags, on_error: ->(_e, _c) {})
  end

  def requests(store_role, kind)
    metric_value("gitlab_redis_multi_store_requests_total", instance_name: instance_name, store: store_role, kind: kind)
  end

  # The labels GitLab's dashboards query these two counters by.
  describe "command labels" do
    before { flags.enable(dual_write) }

    it "labels a read fallback with the command and the reason" do
      secondary_server.client.set("k", "v")
      secondary_server.client.sadd("s", "m")

      expect { store.get("k"); store.smembers("s") }
        .to change { metric_value("gitlab_redis_multi_store_read_fallback_total", instance_name: instance_name, command: "get", reason: "miss") }.by(1)
        .and change { metric_value("gitlab_redis_multi_store_read_fallback_total", instance_name: instance_name, command: "smembers", reason: "miss") }.by(1)
      expect { store.pipelined { |p| p.get("k") } }
        .to change { metric_value("gitlab_redis_multi_store_read_fallback_total", instance_name: instance_name, command: "pipelined") }.by(1)
    end

    it "labels a pipeline whose results differed pipelined, and a transaction multi" do
      primary_server.client.set("c1", 5)
      primary_server.client.set("c2", 5)

      expect { store.pipelined { |p| p.incr("c1") } }
        .to change { metric_value("gitlab_redis_multi_store_pipelined_diff_error_total", instance_name: instance_name, command: "pipelined") }.by(1)
      expect { store.multi { |tx| tx.incr("c2") } }
        .to change { metric_value("gitlab_redis_multi_store_pipelined_diff_error_total", instance_name: instance_name, command: "multi") }.by(1)
    end
  end

  describe "requests_total and duration_seconds" do
    it "counts round trips per store and kind: the default store only while the flags are off" do
      expect { store.set("k", "v") }.to change { requests("secondary", "write") }.by(1)
        .and(change { requests("primary", "write") }.by(0))
      expect { store.get("k") }.to change { requests("secondary", "read") }.by(1)
      expect { store.pipelined { |p| p.get("k") } }.to change { requests("secondary", "pipeline") }.by(1)
    end

    it "counts both stores for a dual write and the fallback read of a miss" do
      flags.enable(dual_write)
      secondary_server.client.set("old", "v")

      expect { store.set("k", "v") }.to change { requests("primary", "write") }.by(1)
        .and(change { requests("secondary", "write") }.by(1))
      expect { store.get("old") }.to change { requests("primary", "read") }.by(1)
        .and(change { requests("secondary", "read") }.by(1))
    end

    it "observes each round trip's duration" do
      count = -> { metric_value("gitlab_redis_multi_store_duration_seconds_count", instance_name: instance_name, store: "secondary") }

      expect { 3.times { store.ping } }.to change(&count).by(3)
    end

    it "can be turned off, leaving the GitLab counters on" do
      described_class.request_metrics = false
      flags.enable(dual_write)
      secondary_server.client.set("old", "v")

      expect { store.get("old") }.not_to(change { requests("primary", "read") })
      expect(metric_value("gitlab_redis_multi_store_read_fallback_total", instance_name: instance_name, reason: "miss")).to be >= 1
    ensure
      described_class.request_metrics = true
    end
  end

  it "exposes text that a real Prometheus parser reads" do
    flags.enable(dual_write)
    store.set("k", "v")
    store.get("missing")
    secondary_server.client.set("only-old", "v")
    store.get("only-old") # a fallback: its series exists once one happened, labelled by command
    store.call(["NOT.A.COMMAND"]) rescue Redis::CommandError # rubocop:disable Style/RescueModifier

    parser = <<~PY
      import sys
      from prometheus_client.parser import text_string_to_metric_families
      for family in text_string_to_metric_families(sys.stdin.read()):
          for sample in family.samples:
              print(sample.name, sample.labels.get("instance_name", ""), sample.value)
    PY
    output, status = Open3.capture2("/usr/bin/python3", "-c", parser, stdin_data: described_class.metrics_text)

    expect(status).to be_success
    names = output.lines.map { |line| line.split.first }.uniq
    expect(names).to include(
      "gitlab_redis_multi_store_requests_total",
      "gitlab_redis_multi_store_duration_seconds_bucket",
      "gitlab_redis_multi_store_method_missing_total",
      "gitlab_redis_multi_store_read_fallback_total"
    )
    expect(output).to include("gitlab_redis_multi_store_method_missing_total observed 1.0")
  end

  describe "on_metric" do
    after { described_class.on_metric = nil }

    it "hands every increment and observation to the application's hook" do
      samples = []
      described_class.on_metric = ->(name, labels, value) { samples << [name, labels, value] }
      flags.enable(dual_write)

      store.set("k", "v")

      writes = samples.select { |name, _, _| name == :gitlab_redis_multi_store_requests_total }
      expect(writes.map { |_, labels, value| [labels[:store], labels[:kind], value] })
        .to contain_exactly(["primary", "write", 1.0], ["secondary", "write", 1.0])
      durations = samples.select { |name, _, _| name == :gitlab_redis_multi_store_duration_seconds }
      expect(durations.map { |_, _, seconds| seconds }).to all(be_between(0, 1))
    end

    it "feeds prometheus-client-mmap through the adapter shown in the README" do
      require "prometheus/client"
      Prometheus::Client.configure do |config|
        config.multiprocess_files_dir = Dir.mktmpdir("gitlab-multistore-metrics")
        config.pid_provider = -> { "spec" }
      end
      registry = Prometheus::Client.registry
      metrics = {}
      described_class.on_metric = lambda do |name, labels, value|
        metric = metrics[name] ||=
          if name.end_with?("_seconds")
            registry.histogram(name, "gitlab_multistore #{name}")
          elsif name.end_with?("_total")
            registry.counter(name, "gitlab_multistore #{name}")
          else
            registry.gauge(name, "gitlab_multistore #{name}", {}, :livesum)
          end
        case metric
        when Prometheus::Client::Histogram then metric.observe(labels, value)
        when Prometheus::Client::Counter then metric.increment(labels, value)
        else metric.set(labels, value)
        end
      end

      2.times { store.set("k", "v") }

      counter = metrics[:gitlab_redis_multi_store_requests_total]
      expect(counter.get(instance_name: instance_name, store: "secondary", kind: "write")).to eq(2.0)
    end

    it "hands it every metric the registry exports, those of the re-sync thread and of a restart included" do
      seen = Hash.new { |hash, name| hash[name] = [] }
      described_class.on_metric = lambda do |name, labels, value|
        seen[name.to_s] << value if labels[:instance_name] == "every_metric"
      end
      new_store = dedicated_redis_server
      every = described_class.new({ url: new_store.url, timeout: 0.2 }, secondary_server.url, "every_metric",
                                  feature_flags: flags, on_error: ->(_e, _c) {},
                                  journal_capacity: 3, breaker_threshold: 2, breaker_cool_down: 0.3)
      flags.enable(:use_primary_and_secondary_stores_for_every_metric)
      old = secondary_server.client

      every.set("warm", "1")
      old.set("only-old", "v")
      every.get("only-old") # read from the secondary after the primary missed
      every.call(["NOT.A.COMMAND"]) rescue Redis::CommandError # rubocop:disable Style/RescueModifier
      old.set("counter", "10")
      every.pipelined { |p| p.incr("counter") } # 1 on the new store, 11 on the old
      Process.kill(:STOP, new_store.pid)
      6.times { |i| every.set("missed:#{i}", i) } # fail, open the breaker, are skipped; 3 journaled
      Process.kill(:CONT, new_store.pid)
      sleep 0.05 until seen.key?("gitlab_redis_multi_store_resynced_keys_total") || (waited = (waited || 0) + 1) > 100
      new_store.restart
      every.set("after-restart", "1") # the new store's run_id changed
      every.get("warm") # a later call hands over what the re-sync thread recorded meanwhile

      exported = described_class.metrics_text.scan(/^# TYPE (\S+)/).flatten
      expect(exported.size).to eq(12)
      expect(exported - seen.keys).to be_empty
      expect(seen["gitlab_redis_multi_store_journal_keys"]).to include(3.0, 0.0)
    ensure
      Process.kill(:CONT, new_store.pid) if new_store
      every&.close
    end

    it "still gets every other sample when it raises on one" do
      kept = []
      described_class.on_metric = lambda do |name, labels, value|
        raise "no histograms here" if name == :gitlab_redis_multi_store_duration_seconds

        kept << [name, labels[:kind]] if labels[:instance_name] == instance_name
      end

      10.times { store.set("k", "v") }

      expect(kept.count([:gitlab_redis_multi_store_requests_total, "write"])).to eq(10)
    end

    it "is not handed the samples of the calls it makes itself, which would never end" do
      calls = 0
      described_class.on_metric = lambda do |_name, labels, _value|
        next unless labels[:instance_name] == instance_name

        calls += 1
        store.incr("metric_count") # a metrics client kept in the store it observes
      end

      store.set("k", "v")

      expect(calls).to eq(2) # the SET's request and duration, not the INCRs'
      expect(secondary_server.client.get("metric_count")).to eq("2")
    end

    it "never fails a command when the hook raises" do
      described_class.on_metric = ->(*) { raise "metrics backend down" }

      expect(store.set("k", "v")).to eq("OK")
      expect(secondary_server.client.get("k")).to eq("v")
    end
  end

  describe "logs" do
    let(:log) { StringIO.new }

    around do |example|
      previous = described_class.logger
      described_class.logger = Logger.new(log)
      described_class.log_level = :debug
      example.run
    ensure
      described_class.log_level = :warn
      described_class.logger = previous
    end

    it "writes the core's events to the Ruby logger as structured lines, without values or passwords" do
      closed_port = RedisServers.free_port
      flags.enable(dual_write)
      failing = described_class.new("redis://:s3cret@127.0.0.1:#{closed_port}/0", secondary_server.url, instance_name,
                                    feature_flags: flags, on_error: ->(_e, _c) {})

      failing.set("session:42", "private-value")

      line = log.string.lines.find { |l| l.include?("write failed on the non-default store") }
      expect(line).to include("instance_name=observed", "command_name=set", "store=primary",
                              "Error connecting to Redis on 127.0.0.1:#{closed_port}")
      expect(log.string).not_to include("private-value", "session:42", "s3cret")
    end

    it "forwards nothing below the configured level" do
      described_class.log_level = :error
      # Lines queued before the change (by earlier examples' background re-sync) go out now.
      described_class.flush_logs
      log.truncate(0)
      flags.enable(dual_write)
      failing = described_class.new({ port: RedisServers.free_port }, secondary_server.url, instance_name,
                                    feature_flags: flags, on_error: ->(_e, _c) {})

      failing.set("k", "v")

      expect(log.string).to be_empty
    end
  end
end
