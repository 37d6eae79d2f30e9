# frozen_string_literal: true

# A seeded differential and fault-injection fuzzer for Gitlab::Redis::MultiStore: random
# programs of Redis commands drawn from Redis's own command table, flag flips along the
# migration runbook, faults of the non-default store and operator actions, run against real
# servers and checked after every step against a plain redis-rb client on a third server.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "gitlab_multistore"
require "gitlab_multistore/local_redis_server"
require_relative "multistore_fuzz/grammar"
require_relative "multistore_fuzz/program"
require_relative "multistore_fuzz/snapshot"
require_relative "multistore_fuzz/world"
require_relative "multistore_fuzz/runner"
require_relative "multistore_fuzz/snippet"

module MultistoreFuzz
  # The three servers a run needs.
  def self.start_servers
    %i[primary secondary reference].to_h { |role| [role, GitlabMultistore::LocalRedisServer.new] }
  end
end
