# frozen_string_literal: true

# The whole migration, forward and back, while 8 threads keep using the store: no caller ever
# sees an error, and no read misses a value written through the MultiStore since dual-write
# began.
RSpec.describe Gitlab::Redis::MultiStore, "migration flow under load" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:dual_write) { :use_primary_and_secondary_stores_for_flow }
  let(:primary_default) { :use_primary_store_as_default_for_flow }
  let(:store) do
    described_class.new(primary_server.url, secondary_server.url, "flow", feature_flags: flags,
                                                                         on_error: ->(_e, _c) {})
  end

  # Each step: the flags on while it runs. Steps 2 to 4 and back, as an operator would roll out
  # and roll back.
  let(:steps) do
    [
      [],                               # 1: everything on the old store
      [dual_write],                     # 2: writes to both, reads primary with fallback
      [dual_write, primary_default],    # 3: the primary answers
      [primary_default],                # 4: primary only
      [dual_write, primary_default],    # rollback to 3
      [dual_write]                      # rollback to 2
    ]
  end

  it "moves the data with no caller-visible error and no lost write" do
    step = 0
    stop = false
    failures = Queue.new
    written = Array.new(8) { [] }

    workers = Array.new(8) do |t|
      Thread.new do
        i = 0
        until stop
          i += 1
          key = "flow:#{t}:#{i}"
          dual_write_began = step >= 1
          begin
            store.set(key, i, ex: 600)
            failures << "#{key} read back #{store.get(key).inspect}" unless store.get(key) == i.to_s
            written[t] << [key, i.to_s] if dual_write_began
            earlier_key, earlier_value = written[t].sample
            if earlier_key && store.get(earlier_key) != earlier_value
              failures << "#{earlier_key} (written at an earlier step) read as #{store.get(earlier_key).inspect}"
            end
            store.pipelined { |p| p.hincrby("counters:#{t}", "ops", 1) }
          rescue StandardError => e
            failures << "#{e.class}: #{e.message}"
          end
        end
      end
    end

    steps.each_with_index do |on, index|
      flags.set(*on)
      # Only after the flip: a write counted as "since dual-write" must have seen the flags on.
      step = index
      sleep 0.4
    end
    stop = true
    workers.each(&:join)

    expect(Array.new(failures.size) { failures.pop }).to be_empty
    keys_since_dual_write = written.flatten(1)
    expect(keys_since_dual_write.size).to be > 100
    missing = keys_since_dual_write.reject { |key, value| store.get(key) == value }
    expect(missing).to be_empty
    # Every write made since dual-write began reached the primary, which is what the switch needs.
    on_primary = primary_server.client.mget(*keys_since_dual_write.map(&:first))
    expect(on_primary).to eq(keys_since_dual_write.map(&:last))
  end
end
