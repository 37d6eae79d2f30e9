# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "gitlab_multistore"
require_relative "support/redis_servers"
require_relative "support/multi_store_helpers"
require_relative "support/call_outcome"
require_relative "support/sentinel_cluster"
require_relative "support/local_redis_cluster"

Redis.silence_deprecations = true
# Reports from instances built without an on_error would only clutter the output.
Gitlab::Redis::MultiStore.logger = Logger.new(File::NULL)

RSpec.configure do |config|
  config.disable_monkey_patching!
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.order = :random
  Kernel.srand config.seed

  # A focused spec committed by mistake would silently skip the rest on CI.
  config.before(:suite) do
    focused = RSpec.world.filtered_examples.values.flatten.select { |e| e.metadata[:focus] }
    raise "focused specs committed: #{focused.map(&:location).join(', ')}" if ENV["CI"] && focused.any?
  end

  config.include RedisServers::Helpers
  config.include MultiStoreHelpers
  config.after(:suite) { RedisServers.stop_all }

  if ENV["GC_STRESS"]
    config.around { |example| GC.stress = true; example.run; GC.stress = false }
  end
end
