# frozen_string_literal: true

require "gitlab_multistore/local_redis_cluster"

# The cluster the specs use, with what they need to look inside it and reshard it.
class LocalRedisCluster < GitlabMultistore::LocalRedisCluster
  def slot(key)
    live_client.cluster("keyslot", key)
  end

  # The server that serves a key's slot, as the cluster itself says.
  def server_for(key)
    port = slot_owners(live_server).find { |range, _| range.cover?(slot(key)) }&.last
    @servers.find { |s| s.port == port }
  end

  # A key whose slot is served by `server` (keys named prefix0, prefix1, … until one fits).
  def key_on(server, prefix = "k")
    (0..).lazy.map { |i| "#{prefix}#{i}" }.find { |key| server_for(key) == server }
  end

  # The server replicating `master`.
  def replica_of(master)
    @servers.find do |s|
      role = s.client.call(%w[role])
      role.first == "slave" && role[2] == master.port
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

  private

  def live_server
    @servers.find(&:pid)
  end

  def live_client
    live_server.client
  end

  def node_id(server)
    server.client.cluster("myid")
  end
end
