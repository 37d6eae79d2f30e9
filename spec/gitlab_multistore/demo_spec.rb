# frozen_string_literal: true

require "gitlab_multistore/demo"

RSpec.describe GitlabMultistore::Demo do
  it "walks a live migration end to end with no caller error and no key lost" do
    out = StringIO.new
    demo = described_class.new(out, quick: true)

    expect(demo.run).to be(true)

    log = out.string
    expect(log).to include("Step 1: All traffic on the old store", "Step 2: Dual-write", "Step 3: Backfill",
                           "Step 4: Verify", "Step 5: Primary as default", "Step 6: Rollback", "Step 8: Primary only")
    expect(log).to match(/readiness 100\.00%.*safe to switch the default/)
    expect(demo.summary).to include(caller_errors: 0, keys_lost: 0, verify_in_agreement: true)
    expect(demo.summary[:keys_on_new_store]).to eq(demo.summary[:keys_on_old_store])
    expect(File.read(demo.summary[:metrics_path])).to include('gitlab_redis_multi_store_requests_total{instance_name="demo_sessions"')
    picture = File.read(demo.summary[:timeline_path])
    expect(picture).to include("<svg", "operations/s", "read fallbacks/s", "keys waiting for re-sync",
                               "2. Dual-write", "3. Backfill", "8. Primary only")
    expect(picture.scan("<polyline").size).to eq(5)
    expect(picture).not_to include("<script", "http://", "https://")
  ensure
    [demo&.summary&.dig(:metrics_path), demo&.summary&.dig(:timeline_path)].compact.each { |f| File.delete(f) if File.exist?(f) }
  end

  it "moves the partition onto a Redis Cluster the same way with --cluster" do
    out = StringIO.new
    demo = described_class.new(out, quick: true, cluster: true)

    expect(demo.run).to be(true)

    expect(out.string).to include("a Redis Cluster of 3 masters", "Step 8: Primary only")
    expect(demo.summary).to include(caller_errors: 0, keys_lost: 0, verify_in_agreement: true)
    expect(demo.summary[:keys_on_new_store]).to eq(demo.summary[:keys_on_old_store])
  ensure
    File.delete(demo.summary[:metrics_path]) if demo&.summary && File.exist?(demo.summary[:metrics_path])
  end

  it "stops its redis-servers when it ends" do
    out = StringIO.new
    demo = described_class.new(out, quick: true)
    demo.run
    ports = out.string.lines.first.scan(%r{redis://127\.0\.0\.1:(\d+)}).flatten.map(&:to_i)

    expect(ports.size).to eq(2)
    ports.each do |port|
      expect { TCPSocket.new("127.0.0.1", port).close }.to raise_error(Errno::ECONNREFUSED)
    end
  ensure
    File.delete(demo.summary[:metrics_path]) if demo&.summary && File.exist?(demo.summary[:metrics_path])
  end
end
