# frozen_string_literal: true

require "gitlab_multistore/local_redis_server"
require "gitlab_multistore/waiting"

module GitlabMultistore
  # A throw-away Redis Cluster: masters (and optionally replicas of them) on free loopback
  # ports, joined by `redis-cli --cluster create` as an operator would (Debian's redis-tools).
  # Used by the demo and the specs; never by the MultiStore itself.
  class LocalRedisCluster
    include Waiting

    SLOTS = 16_384
    # Seconds a master may not answer before the others may declare it failed (and, with no
    # replica to promote, stop serving the whole cluster).
    NODE_TIMEOUT = 2.0

    attr_reader :servers

    def initialize(masters: 3, replicas: 0)
      @servers = Array.new(masters * (1 + replicas)) do
        # The cluster bus gets its own free port: the default (port + 10000) may not exist.
        LocalRedisServer.new("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                             "--cluster-node-timeout", (NODE_TIMEOUT * 1000).round.to_s,
                             "--cluster-port", LocalRedisServer.free_port.to_s)
      end
      create(replicas)
      wait_until_healthy
      wait_until("every replica to sync with its master") do
        @servers.all? { |s| s.client.info("replication").values_at("role", "master_link_status") != %w[slave down] }
      end
    rescue StandardError
      cleanup
      raise
    end

    # The nodes as redis-rb's `cluster:` option takes them.
    def urls
      @servers.map(&:url)
    end

    # The master serving the slot of `key`.
    def master_of(key)
      slot = @servers.first.client.call(["cluster", "keyslot", key])
      port = slot_owners(@servers.first).find { |range, _| range.cover?(slot) }&.last
      @servers.find { |s| s.port == port } || raise("no master serves the slot of #{key.inspect}")
    end

    # Keys on every master that is up.
    def dbsize
      @servers.select(&:pid).sum { |s| s.client.info("replication")["role"] == "master" ? s.client.dbsize : 0 }
    end

    # Every node up, serving every slot and agreeing on who serves what.
    def wait_until_healthy
      wait_until("every node to see the whole cluster") do
        views = @servers.map do |s|
          s.client.call(%w[cluster info]).include?("cluster_state:ok") && slot_owners(s).sort_by { |range, _| range.first }
        rescue ::Redis::BaseConnectionError
          false
        end
        views.all? && views.uniq.size == 1 && views.first.sum { |range, _| range.size } == SLOTS
      end
    end

    def cleanup
      @servers&.each(&:cleanup)
    end

    private

    def create(replicas)
      created = system("redis-cli", "--cluster", "create", *@servers.map { |s| "127.0.0.1:#{s.port}" },
                       "--cluster-replicas", replicas.to_s, "--cluster-yes", out: File::NULL, err: File::NULL)
      raise LocalRedisServer::MissingBinary, "redis-cli --cluster create failed: install Debian's redis-tools" unless created
    end

    # [[slot range, port], …] as `server` sees the cluster.
    def slot_owners(server)
      server.client.call(%w[cluster slots]).map { |first, last, master| [first..last, master[1]] }
    end
  end
end
