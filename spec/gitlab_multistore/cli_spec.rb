# frozen_string_literal: true

require "gitlab_multistore/cli"
require "json"
require "net/http"
require "open3"
require "rbconfig"
require "stringio"
require "tmpdir"

# `gitlab-multistore backfill|verify`: the report on stdout, progress on stderr, and an exit
# status a script can act on (0 done/agree, 1 a problem found, 2 a usage error).
RSpec.describe GitlabMultistore::CLI do
  let(:primary) { primary_server.client }
  let(:secondary) { secondary_server.client }
  let(:stores) { ["--primary", primary_server.url, "--secondary", secondary_server.url] }
  let(:result_class) { Struct.new(:status, :out, :err) }

  after do
    primary.close
    secondary.close
  end

  def run_cli(*argv, tty: false)
    out = StringIO.new
    err = StringIO.new
    status = described_class.new(out: out, err: err, tty: tty).run(argv)
    result_class.new(status, out.string, err.string)
  end

  def populate(redis, count, prefix:)
    redis.pipelined { |p| count.times { |i| p.set("#{prefix}:#{i}", "value-#{i}") } }
  end

  describe "verify" do
    it "exits 1 and says the stores disagree when a key is missing on the primary" do
      populate(secondary, 10, prefix: "key")
      populate(primary, 9, prefix: "key")

      result = run_cli("verify", *stores)

      expect(result.status).to eq(1)
      expect(result.out).to include("checked 10", "agree 9", "missing on primary 1", "readiness 90.00%",
                                    "the stores DISAGREE")
    end

    it "exits 0 and says the stores agree when they hold the same keys" do
      populate(secondary, 10, prefix: "key")
      populate(primary, 10, prefix: "key")

      result = run_cli("verify", *stores)

      expect(result.status).to eq(0)
      expect(result.out).to include("checked 10", "agree 10", "readiness 100.00%", "the stores agree")
    end

    it "repairs the differences with --repair, exiting 0, after which the stores agree" do
      populate(secondary, 10, prefix: "key")
      primary.set("key:3", "stale")
      primary.set("stray", "only on the primary")

      result = run_cli("verify", *stores, "--repair")

      expect(result.status).to eq(0)
      expect(result.out).to include("repaired 11")
      expect(primary.get("key:3")).to eq("value-3")
      expect(primary.exists?("stray")).to be(false)
      expect(run_cli("verify", *stores).status).to eq(0)
    end

    it "repairs from the primary with --default primary (after the switch), never reverting its newer data" do
      populate(secondary, 10, prefix: "key")
      populate(primary, 10, prefix: "key")
      primary.set("key:3", "newer")
      secondary.set("only-old", "deleted since the switch")

      result = run_cli("verify", *stores, "--repair", "--default", "primary")

      expect(result.status).to eq(0)
      expect([primary.get("key:3"), secondary.get("key:3")]).to eq(%w[newer newer])
      expect([primary.exists?("only-old"), secondary.exists?("only-old")]).to eq([false, false])
    end

    it "prints the report as JSON with --json" do
      populate(secondary, 4, prefix: "key")
      populate(primary, 3, prefix: "key")

      result = run_cli("verify", *stores, "--json")

      report = JSON.parse(result.out)
      expect(report).to include("command" => "verify", "checked" => 4, "agree" => 3, "missing_on_primary" => 1,
                                "different" => 0, "only_on_primary" => 0, "readiness" => 75.0,
                                "in_agreement" => false, "done" => true)
      expect(report.keys).to include("repaired", "repair_failed", "total", "elapsed", "rate")
      expect(result.status).to eq(1)
    end
  end

  describe "backfill" do
    it "copies the missing keys, after which verify exits 0" do
      populate(secondary, 300, prefix: "key")
      populate(primary, 20, prefix: "key")

      backfill = run_cli("backfill", *stores)
      verify = run_cli("verify", *stores)

      expect(backfill.status).to eq(0)
      expect(backfill.out).to match(/\Abackfill: scanned 300, copied 280, already present 20, expired 0, failed 0, undone 0 /)
      expect(verify.status).to eq(0)
      expect(verify.out).to include("checked 300, agree 300", "the stores agree")
    end

    it "copies only the keys matching --match" do
      populate(secondary, 20, prefix: "session")
      populate(secondary, 20, prefix: "cache")

      result = run_cli("backfill", *stores, "--match", "session:*", "--json")

      expect(result.status).to eq(0)
      expect(JSON.parse(result.out)).to include("command" => "backfill", "scanned" => 20, "copied" => 20,
                                                "failed" => 0)
      expect(primary.keys("session:*").size).to eq(20)
      expect(primary.keys("cache:*")).to be_empty
    end

    it "exits 1 when keys could not be copied" do
      # The primary takes writes only to ok:* keys.
      restricted = dedicated_redis_server("--user", "default", "on", "nopass", "%R~*", "%W~ok:*", "+@all")
      populate(secondary, 3, prefix: "ok")
      populate(secondary, 2, prefix: "refused")

      result = run_cli("backfill", "--primary", restricted.url, "--secondary", secondary_server.url)

      expect(result.status).to eq(1)
      expect(result.out).to include("copied 3", "failed 2")
    end
  end

  describe "progress" do
    before { populate(secondary, 1_000, prefix: "key") }

    it "prints a line per 10 % on stderr when not on a terminal, ending at 100 %" do
      result = run_cli("backfill", *stores, "--count", "50")

      lines = result.err.lines(chomp: true)
      expect(lines).to all(match(%r{\Abackfill: \d+% \(\d+/1000 keys, \d+ keys/s\)\z}))
      percents = lines.map { |line| line[/(\d+)%/, 1].to_i }
      expect(percents).to eq(percents.sort.uniq)
      expect(percents.size).to be >= 5
      expect(percents.last).to eq(100)
      expect(result.err).not_to include("\r")
      expect(result.out.lines.size).to eq(1)
    end

    it "ends at 100 % with --match as well, once the backfill is done" do
      result = run_cli("backfill", *stores, "--count", "50", "--match", "key:1*")

      expect(result.status).to eq(0)
      expect(result.err.lines.last).to start_with("backfill: 100%")
    end

    it "draws a bar redrawn in place with carriage returns on a terminal" do
      result = run_cli("verify", *stores, "--count", "100", tty: true)

      frames = result.err.split("\r").reject(&:empty?)
      expect(frames.size).to be >= 5
      expect(frames).to all(match(%r{\Averify \[[# ]{30}\] \d+/1000 keys, \d+ keys/s, ETA (\d+s|\?)}))
      expect(frames.last).to include("[#{'#' * 30}] 1000/1000 keys")
      expect(result.err).to end_with("\n")
      expect(result.out).to include("checked 1000")
    end
  end

  describe "--checkpoint and --resume" do
    it "continues a stopped backfill where it was, and removes the checkpoint when done" do
      populate(secondary, 1_000, prefix: "key")
      checkpoint = File.join(Dir.mktmpdir, "backfill.json")
      # A backfill stopped after its third page (as a kill would stop it, before its end).
      first = Gitlab::Redis::MultiStore.new(primary_server.url, secondary_server.url, "gitlab_multistore_cli",
                                            feature_flags: ->(flag) { flag.to_s.start_with?("use_primary_and") })
      pages = 0
      expect { first.backfill(count: 100, checkpoint: checkpoint) { (pages += 1) == 3 && raise(Interrupt) } }.to raise_error(Interrupt)
      first.close
      expect(primary.dbsize).to be_between(200, 400) # three SCAN pages of about 100

      result = run_cli("backfill", *stores, "--count", "100", "--checkpoint", checkpoint, "--resume", "--json")

      report = JSON.parse(result.out)
      expect([result.status, report["scanned"], report["copied"], report["already_present"]]).to eq([0, 1_000, 1_000, 0])
      expect(primary.dbsize).to eq(1_000)
      expect(File.exist?(checkpoint)).to be(false)
    end
  end

  describe "--metrics-port" do
    it "serves /metrics with the backfill's progress gauges while it runs" do
      populate(secondary, 300, prefix: "key")
      err = StringIO.new
      cli = described_class.new(out: StringIO.new, err: err, tty: false)
      runner = Thread.new { cli.run(["backfill", *stores, "--rate", "300", "--count", "50", "--metrics-port", "0"]) }
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      sleep 0.05 until err.string.include?("/metrics") || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      url = err.string[%r{http://127\.0\.0\.1:\d+/metrics}]
      sleep 0.3 # a few pages copied
      body = Net::HTTP.get(URI(url))
      not_found = Net::HTTP.get_response(URI(url.sub("/metrics", "/other")))

      expect(runner.value).to eq(0)
      aggregate_failures do
        expect(body[/^gitlab_multistore_backfill_scanned (\S+)$/, 1].to_f).to be_positive
        expect(body).to include("gitlab_multistore_backfill_total 300.0", "# TYPE gitlab_multistore_backfill_done gauge",
                                "gitlab_redis_multi_store_requests_total{")
        expect(not_found.code).to eq("404")
        expect(primary.dbsize).to be_between(200, 400) # three SCAN pages of about 100
      end
    end
  end

  describe "usage errors" do
    it "exits 2 with a message on stderr when --secondary is missing" do
      result = run_cli("backfill", "--primary", primary_server.url)

      expect(result.status).to eq(2)
      expect(result.err).to include("--primary and --secondary are required")
      expect(result.out).to be_empty
    end

    it "exits 2 for an unknown option, an invalid number or an unknown command" do
      expect(run_cli("verify", *stores, "--frobnicate")).to have_attributes(status: 2, err: /invalid option: --frobnicate/)
      expect(run_cli("verify", *stores, "--sample", "many")).to have_attributes(status: 2, err: /invalid argument/)
      expect(run_cli("migrate")).to have_attributes(status: 2, err: /unknown command "migrate"/)
    end

    it "prints the usage with --help and exits 0" do
      result = run_cli("--help")

      expect(result.status).to eq(0)
      expect(result.out).to include("Usage: gitlab-multistore COMMAND", "--primary URL", "--repair", "--json")
    end
  end

  describe "a password in a store URL" do
    let(:guarded) { dedicated_redis_server("--requirepass", "secret") }
    let(:guarded_url) { "redis://:secret@127.0.0.1:#{guarded.port}/0" }

    it "is used to connect but never printed" do
      populate(secondary, 50, prefix: "key")

      backfill = run_cli("backfill", "--primary", guarded_url, "--secondary", secondary_server.url)
      verify = run_cli("verify", "--primary", guarded_url, "--secondary", secondary_server.url, "--json")
      verify_on_tty = run_cli("verify", "--primary", guarded_url, "--secondary", secondary_server.url, tty: true)

      expect([backfill.status, verify.status, verify_on_tty.status]).to eq([0, 0, 0])
      copied = guarded.client(password: "secret")
      expect(copied.dbsize).to eq(50)
      copied.close
      [backfill, verify, verify_on_tty].each do |result|
        expect(result.out + result.err).not_to include("secret")
      end
    end

    it "is not printed when it is wrong" do
      result = run_cli("verify", "--primary", "redis://:hunter2@127.0.0.1:#{guarded.port}/0",
                       "--secondary", secondary_server.url)

      expect(result.status).to eq(1)
      expect(result.err.lines.last).to start_with("gitlab-multistore: Redis::CommandError: WRONGPASS")
      expect(result.out + result.err).not_to include("hunter2")
    end

    it "is not printed when the URL is malformed: a usage error" do
      result = run_cli("verify", "--primary", "redis://:secret@127.0.0.1:notaport/0",
                       "--secondary", secondary_server.url)

      expect(result.status).to eq(2)
      expect(result.err).to start_with("gitlab-multistore: ")
      expect(result.out + result.err).not_to include("secret")
    end
  end

  describe "the gitlab-multistore executable" do
    it "runs a backfill: JSON report on stdout, progress lines on stderr, exit 0" do
      populate(secondary, 100, prefix: "key")
      exe = File.expand_path("../../exe/gitlab-multistore", __dir__)

      stdout, stderr, status = Open3.capture3(RbConfig.ruby, exe, "backfill", *stores, "--json")

      expect(status.exitstatus).to eq(0), stderr
      expect(JSON.parse(stdout)).to include("command" => "backfill", "scanned" => 100, "copied" => 100,
                                            "failed" => 0, "done" => true)
      expect(stderr).to match(%r{^backfill: 100% \(100/100 keys})
      expect(primary.dbsize).to eq(100)
    end
  end
end
