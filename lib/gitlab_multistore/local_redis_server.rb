# frozen_string_literal: true

require "socket"
require "tmpdir"
require "fileutils"

module GitlabMultistore
  # A throw-away redis-server (Debian's `redis-server`, found on PATH) on a free loopback port
  # and a unix socket in a temporary directory. Used by the demo and the specs; never by the
  # MultiStore itself.
  class LocalRedisServer
    MissingBinary = Class.new(StandardError)

    attr_reader :port, :socket_path, :dir, :pid

    def self.binary
      path = ENV.fetch("PATH", "").split(File::PATH_SEPARATOR)
                .map { |dir| File.join(dir, "redis-server") }
                .find { |file| File.executable?(file) }
      path || raise(MissingBinary, "redis-server not found on PATH: install Debian's redis-server package " \
                                   "(apt-get install redis-server)")
    end

    def self.free_port
      server = TCPServer.new("127.0.0.1", 0)
      server.addr[1]
    ensure
      server&.close
    end

    def initialize(*extra_args)
      @extra_args = extra_args
      @dir = Dir.mktmpdir("gitlab-multistore-redis-")
      @socket_path = File.join(@dir, "redis.sock")
      start
    end

    def start(port: self.class.free_port)
      @port = port
      @pid = Process.spawn(
        self.class.binary, "--port", @port.to_s, "--bind", "127.0.0.1",
        "--unixsocket", @socket_path, "--save", "", "--appendonly", "no",
        "--dir", @dir, "--enable-debug-command", "yes", *@extra_args,
        out: File::NULL, err: File::NULL, pgroup: true
      )
      wait_until_ready
      self
    end

    # Same port, empty data: what a crashed and restarted Redis looks like to its clients.
    def restart
      stop
      start(port: @port)
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

    def cleanup
      stop
      FileUtils.remove_entry(@dir) if File.directory?(@dir)
    end

    def url(db = 0)
      "redis://127.0.0.1:#{@port}/#{db}"
    end

    # A plain redis-rb client, to look at what the server holds independently of MultiStore.
    def client(**options)
      ::Redis.new(host: "127.0.0.1", port: @port, **options)
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
end
