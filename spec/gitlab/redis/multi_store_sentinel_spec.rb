# frozen_string_literal: true

RSpec.describe Gitlab::Redis::MultiStore, "with a store behind Redis Sentinel" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:reports) { [] }

  before(:all) { @sentinels = SentinelCluster.new }
  after(:all) { @sentinels&.cleanup }

  def store_on_sentinels(secondary_options = @sentinels.store_options)
    described_class.new(primary_server.url, secondary_options, "sentinel_store",
                        feature_flags: flags, on_error: ->(e, c) { reports << [e, c] })
  end

  def current_master
    port = @sentinels.master_port
    [@sentinels.master, @sentinels.replica].find { |server| server.port == port }
  end

  it "finds the master through the sentinels, as redis-rb does" do
    store = store_on_sentinels
    plain = Redis.new(**@sentinels.store_options)

    expect(store.set("k", "through-sentinel")).to eq("OK")
    expect(plain.get("k")).to eq("through-sentinel")
    expect(current_master.client.get("k")).to eq("through-sentinel")
    expect(store.inspect).to include("127.0.0.1:#{@sentinels.master_port}")
  end

  it "accepts a ::Redis built with sentinel options" do
    store = store_on_sentinels(Redis.new(**@sentinels.store_options))

    store.set("from-redis-instance", "1")

    expect(current_master.client.get("from-redis-instance")).to eq("1")
  end

  it "follows a failover to the new master and keeps dual-writing" do
    flags.enable(:use_primary_and_secondary_stores_for_sentinel_store)
    store = store_on_sentinels
    store.set("before", "1")

    new_master = @sentinels.failover!
    results = 20.times.map do |i|
      store.set("after:#{i}", i)
    rescue Redis::BaseError => e
      e
    end

    # redis-rb, too, loses at most the commands in flight on the connection the failover closed.
    expect(results.count { |r| r.is_a?(Exception) }).to be <= 1
    expect(results.last).to eq("OK")
    expect(new_master.client.get("after:19")).to eq("19")
    expect(primary_server.client.get("after:19")).to eq("19")
    expect(new_master.client.get("before")).to eq("1")
  end

  it "reads from a replica when asked to (role: :replica)" do
    store = store_on_sentinels(@sentinels.store_options(role: :replica))

    expect(store.info("replication")["role"]).to eq("slave")
  end
end
