# frozen_string_literal: true

require "gitlab_multistore/waiting"

# A Redis Sentinel deployment for the specs: a master, a replica and three sentinels watching
# them as "mymaster", all throw-away processes on loopback.
class SentinelCluster
  include GitlabMultistore::Waiting

  MASTER_NAME = "mymaster"

  attr_reader :master, :replica, :sentinel_ports

  def initialize
    @master = RedisServer.new
    @replica = RedisServer.new("--replicaof", "127.0.0.1", @master.port.to_s)
    @dir = Dir.mktmpdir("gitlab-multistore-sentinels-")
    @sentinel_ports = []
    @sentinel_pids = Array.new(3) { |i| start_sentinel(i) }
    wait_until("the replica to sync") { @replica.client.info("replication")["master_link_status"] == "up" }
    wait_until("the sentinels to see the replica and each other") do
      sentinel_clients.all? do |s|
        s.call(["SENTINEL", "replicas", MASTER_NAME]).any? &&
          s.call(["SENTINEL", "sentinels", MASTER_NAME]).size == 2
      end
    end
  end

  # redis-rb's sentinel options for the master.
  def store_options(**extra)
    { host: MASTER_NAME, sentinels: @sentinel_ports.map { |port| { host: "127.0.0.1", port: port } }, **extra }
  end

  def master_port
    Integer(sentinel_clients.first.call(["SENTINEL", "get-master-addr-by-name", MASTER_NAME]).last)
  end

  # Promotes the replica and waits until the sentinels and both servers agree it happened: the
  # new master accepts writes and the old one follows it.
  def failover!
    old = master_port
    sentinel_clients.first.call(["SENTINEL", "failover", MASTER_NAME])
    wait_until("the sentinels to name the new master") { master_port != old }
    new_master, old_master = [@master, @replica].partition { |s| s.port == master_port }.map(&:first)
    wait_until("the new master to accept writes") { new_master.client.info("replication")["role"] == "master" }
    wait_until("the old master to follow the new one") do
      info = old_master.client.info("replication")
      info["role"] == "slave" && info["master_link_status"] == "up"
    end
    new_master
  end

  def cleanup
    @sentinel_pids.each do |pid|
      Process.kill(:KILL, pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
    [@master, @replica].each(&:cleanup)
    FileUtils.remove_entry(@dir)
  end

  private

  def sentinel_clients
    @sentinel_ports.map { |port| Redis.new(host: "127.0.0.1", port: port) }
  end

  def start_sentinel(index)
    port = RedisServers.free_port
    @sentinel_ports << port
    config = File.join(@dir, "sentinel-#{index}.conf")
    File.write(config, <<~CONF)
      port #{port}
      bind 127.0.0.1
      dir #{@dir}
      sentinel monitor #{MASTER_NAME} 127.0.0.1 #{@master.port} 2
      sentinel down-after-milliseconds #{MASTER_NAME} 1000
      sentinel failover-timeout #{MASTER_NAME} 3000
    CONF
    pid = Process.spawn(RedisServer.binary, config, "--sentinel", out: File::NULL, err: File::NULL)
    wait_until("sentinel #{index} to start") { (TCPSocket.new("127.0.0.1", port).close || true) rescue false }
    pid
  end
end
