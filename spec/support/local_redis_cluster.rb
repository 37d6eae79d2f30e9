# frozen_string_literal: true

# A Redis Cluster for the specs: three masters (and optionally replicas of them), throw-away
# processes on loopback, joined by `redis-cli --cluster create` as an operator would.
class LocalRedisCluster
  include Waiting

  SLOTS = 16_384

  attr_reader :servers

  def initialize(masters: 3, replicas: 0)
    @servers = Array.new(masters * (1 + replicas)) do
      # The cluster bus gets its own free port: the default (port + 10000) may not exist.
      RedisServer.new("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                      "--cluster-node-timeout", "2000", "--cluster-port", RedisServers.free_port.to_s)
    end
    created = system("redis-cli", "--cluster", "create", *@servers.map { |s| "127.0.0.1:#{s.port}" },
                     "--cluster-replicas", replicas.to_s, "--cluster-yes", out: File::NULL, err: File::NULL)
    raise "redis-cli --cluster create failed (Debian's redis-tools provides redis-cli)" unless created

    wait_until_healthy
    wait_until("every replica to sync with its master") do
      @servers.all? { |s| s.client.info("replication").values_at("role", "master_link_status") != %w[slave down] }
    end
  end

  # Waits until every node that is up names `owner` as the master of `key`'s slot.
  def wait_until_serving(key, owner)
    wait_until("every node to agree that #{owner.port} serves #{key}") do
      @servers.select(&:pid).all? do |s|
        slot = s.client.cluster("keyslot", key)
        slot_owners(s).find { |range, _| range.cover?(slot) }&.last == owner.port
      rescue Redis::BaseConnectionError
        false
      end
    end
  end

  # The server replicating `master`.
  def replica_of(master)
    @servers.find do |s|
      role = s.client.call(%w[role])
      role.first == "slave" && role[2] == master.port
    end
  end

  # Every node up, serving every slot and agreeing on who serves what (after a node restarted).
  def wait_until_healthy
    wait_until("every node to see the whole cluster") do
      views = @servers.map do |s|
        s.client.call(%w[cluster info]).include?("cluster_state:ok") && slot_owners(s).sort_by { |range, _| range.first }
      rescue Redis::BaseConnectionError
        false
      end
      views.all? && views.uniq.size == 1 && views.first.sum { |range, _| range.size } == SLOTS
    end
  end

  # The nodes as redis-rb's `cluster:` option takes them.
  def urls
    @servers.map(&:url)
  end

  def slot(key)
    @servers.first.client.cluster("keyslot", key)
  end

  # The server that serves a key's slot, as the cluster itself says.
  def server_for(key)
    port = slot_owners(@servers.first).find { |range, _| range.cover?(slot(key)) }&.last
    @servers.find { |s| s.port == port }
  end

  # A key whose slot is served by `server` (keys named prefix0, prefix1, … until one fits).
  def key_on(server, prefix = "k")
    (0..).lazy.map { |i| "#{prefix}#{i}" }.find { |key| server_for(key) == server }
  end

  # Starts moving a key's slot to `target` and moves only that key: the source then answers ASK
  # for it. `finish_migration` completes the move (MOVED from then on).
  def start_migration(key, target)
    source = server_for(key)
    slot = slot(key)
    target.client.cluster("setslot", slot, "importing", node_id(source))
    source.client.cluster("setslot", slot, "migrating", node_id(target))
    source.client.migrate(key, host: "127.0.0.1", port: target.port, db: 0, timeout: 5)
    @migration = [slot, source, target]
  end

  def finish_migration
    slot, source, target = @migration
    source.client.cluster("getkeysinslot", slot, 1_000).each do |key|
      source.client.migrate(key, host: "127.0.0.1", port: target.port, db: 0, timeout: 5)
    end
    @servers.each { |s| s.client.cluster("setslot", slot, "node", node_id(target)) }
    wait_until("every node to agree on slot #{slot}") do
      @servers.all? { |s| slot_owners(s).find { |range, _| range.cover?(slot) }&.last == target.port }
    end
  end

  # Moves a key's slot to `target` in one go, keys and all.
  def move_slot(key, target)
    start_migration(key, target)
    finish_migration
  end

  def flushall
    @servers.each { |s| s.client.flushall }
  end

  def cleanup
    @servers.each(&:cleanup)
  end

  private

  def node_id(server)
    server.client.cluster("myid")
  end

  # [[slot range, port], …] as `server` sees the cluster.
  def slot_owners(server)
    server.client.call(%w[cluster slots]).map { |first, last, master| [first..last, master[1]] }
  end
end
