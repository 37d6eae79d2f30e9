# frozen_string_literal: true

require "gitlab_multistore/local_redis_server"

RedisServer = GitlabMultistore::LocalRedisServer

# The suite's real redis-servers: a shared primary and secondary, flushed after every example,
# and dedicated ones for examples that kill, stop or configure their server.
module RedisServers
  @servers = {}

  class << self
    def free_port
      RedisServer.free_port
    end

    def shared(name)
      @servers[name] ||= RedisServer.new
    end

    def stop_all
      @servers.each_value(&:cleanup)
      @servers.clear
    end
  end

  module Helpers
    def primary_server
      RedisServers.shared(:primary)
    end

    def secondary_server
      RedisServers.shared(:secondary)
    end

    def dedicated_redis_server(*args)
      server = RedisServer.new(*args)
      (@dedicated_servers ||= []) << server
      server
    end

    def self.included(base)
      base.after do
        # Stores are reused between examples: what MultiStores learned about them goes too.
        Gitlab::Redis::MultiStore.forget_partitions!
        (@dedicated_servers || []).each(&:cleanup)
        primary_server.client.tap { |c| c.flushall; c.close }
        secondary_server.client.tap { |c| c.flushall; c.close }
      end
    end
  end
end
