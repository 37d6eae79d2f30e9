# frozen_string_literal: true

require "socket"
require "tmpdir"
require "fileutils"

# Real redis-server processes (Debian's redis-server) for the specs: each on a free loopback
# port with a unix socket, in a throw-away directory, stopped at the end of the suite.
class RedisServer
  attr_reader :port, :socket_path, :dir, :pid

  def self.binary
    path = ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).map { |d| File.join(d, "redis-server") }
                .find { |f| File.executable?(f) }
    path || raise("redis-server not found on PATH; install Debian's redis-server package")
  end

  def initialize(*extra_args)
    @extra_args = extra_args
    @dir = Dir.mktmpdir("gitlab-multistore-redis-")
    @socket_path = File.join(@dir, "redis.sock")
    start
  end

  def start(port: RedisServers.free_port)
    @port = port
    @pid = Process.spawn(
      self.class.binary, "--port", @port.to_s, "--bind", "127.0.0.1",
      "--unixsocket", @socket_path, "--save", "", "--appendonly", "no",
      "--dir", @dir, "--enable-debug-command", "yes", *@extra_args,
      out: File::NULL, err: File::NULL
    )
    wait_until_ready
    self
  end

  def stop
    return unless @pid

    Process.kill(:CONT, @pid)
    Process.kill(:KILL, @pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
  end

  # Same port, empty data: what a crashed and restarted Redis looks like to its clients.
  def restart
    stop
    start(port: @port)
  end

  def cleanup
    stop
    FileUtils.remove_entry(@dir) if File.directory?(@dir)
  end

  def url(db = 0)
    "redis://127.0.0.1:#{@port}/#{db}"
  end

  # A plain redis-rb client, to look at what the server holds independently of MultiStore.
  def client(**options)
    Redis.new(host: "127.0.0.1", port: @port, **options)
  end

  private

  def wait_until_ready
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    loop do
      begin
        TCPSocket.new("127.0.0.1", @port).close
        return if File.socket?(@socket_path)
      rescue Errno::ECONNREFUSED
        nil
      end
      raise "redis-server on port #{@port} did not start" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.02
    end
  end
end

module RedisServers
  @servers = {}

  class << self
    def free_port
      server = TCPServer.new("127.0.0.1", 0)
      server.addr[1]
    ensure
      server&.close
    end

    # Servers shared by the suite, one per name; each example flushes what it uses.
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

    # A server of the example's own, for specs that kill, stop or configure it.
    def dedicated_redis_server(*args)
      server = RedisServer.new(*args)
      (@dedicated_servers ||= []) << server
      server
    end

    def self.included(base)
      base.after do
        (@dedicated_servers || []).each(&:cleanup)
        primary_server.client.tap { |c| c.flushall; c.close }
        secondary_server.client.tap { |c| c.flushall; c.close }
      end
    end
  end
end
