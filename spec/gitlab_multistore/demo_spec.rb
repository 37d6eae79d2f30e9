# frozen_string_literal: true

require "gitlab_multistore/demo"

RSpec.describe GitlabMultistore::Demo do
  it "walks a live migration end to end with no caller error and no key lost" do
    out = StringIO.new
    demo = described_class.new(out, quick: true)

    expect(demo.run).to be(true)

    log = out.string
    expect(log).to include("Step 1: All traffic on the old store", "Step 2: Dual-write", "Step 3: Backfill",
                           "Step 4: The new store hangs: SIGSTOP", "SIGCONT sent", "Step 5: Verify",
                           "Step 6: Primary as default", "Step 7: Rollback", "Step 9: Primary only")
    expect(log).to match(/A caller's SET \S+ through the MultiStore: "OK" after 0\.\d+ s/)
    expect(log).to match(/readiness 100\.00%.*safe to switch the default/)
    expect(demo.summary).to include(caller_errors: 0, keys_lost: 0, verify_in_agreement: true)
    # The hang reached the MultiStore: writes failed, the breaker opened and skipped the new
    # store, and the re-sync brought back every key it missed.
    hang = demo.summary[:new_store_hang]
    expect(hang).to include(seconds: 4.0, journal_after: 0, caller_errors: 0)
    expect(hang).to include(write_failures: be_positive, breaker_opened: be_positive, breaker_skipped: be_positive,
                            journal_peak: be_positive, resynced: be_positive, back_in_line_after: be_a(Float))
    expect(demo.summary[:keys_on_new_store]).to eq(demo.summary[:keys_on_old_store])
    expect(File.read(demo.summary[:metrics_path])).to include('gitlab_redis_multi_store_requests_total{instance_name="demo_sessions"')
    picture = File.read(demo.summary[:timeline_path])
    expect(picture).to include("<svg", "operations/s", "read fallbacks/s", "keys waiting for re-sync",
                               "2. Dual-write", "3. Backfill", "4. The new store hangs (SIGSTOP for 4.0 s)",
                               "9. Primary only")
    expect(picture.scan("<polyline").size).to eq(5)
    expect(picture).not_to include("<script", "http://", "https://")
  ensure
    [demo&.summary&.dig(:metrics_path), demo&.summary&.dig(:timeline_path)].compact.each { |f| File.delete(f) if File.exist?(f) }
  end

  it "moves the partition onto a Redis Cluster the same way with --cluster" do
    out = StringIO.new
    demo = described_class.new(out, quick: true, cluster: true)

    expect(demo.run).to be(true)

    expect(out.string).to include("a Redis Cluster of 3 masters", "Step 9: Primary only")
    expect(out.string).to match(/Step 4: The new store hangs: SIGSTOP to one of the new cluster's 3 masters/)
    expect(demo.summary).to include(caller_errors: 0, keys_lost: 0, verify_in_agreement: true)
    # One master hangs for less than the cluster's node timeout: no failover, the cluster keeps
    # serving. Whether the breaker opens depends on how the other masters' answers interleave
    # with the hung one's timeouts; the demo's own write to the hung master fails for certain.
    expect(demo.summary[:new_store_hang]).to include(seconds: 1.5, write_failures: be_positive, journal_after: 0,
                                                     back_in_line_after: be_a(Float))
    expect(demo.summary[:keys_on_new_store]).to eq(demo.summary[:keys_on_old_store])
  ensure
    [demo&.summary&.dig(:metrics_path), demo&.summary&.dig(:timeline_path)].compact.each { |f| File.delete(f) if File.exist?(f) }
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
    [demo&.summary&.dig(:metrics_path), demo&.summary&.dig(:timeline_path)].compact.each { |f| File.delete(f) if File.exist?(f) }
  end
end
