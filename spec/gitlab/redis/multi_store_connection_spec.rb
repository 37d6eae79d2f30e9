# frozen_string_literal: true

require "timeout"
require "tmpdir"
require "English"

RSpec.describe Gitlab::Redis::MultiStore, "connections" do
  def multi_store(secondary, primary: primary_server.url, **options)
    described_class.new(primary, secondary, "connections", **options)
  end

  describe "refusals and errnos, as redis-rb raises them" do
    it "raises a server at maxclients's refusal as redis-rb does, not as a lost connection" do
      full = dedicated_redis_server("--maxclients", "1")
      # The one client the server takes (once it has let go of the start-up check's socket).
      holder = full.client
      Timeout.timeout(5) do
        holder.ping
      rescue Redis::CommandError
        holder.close
        sleep 0.05
        retry
      end
      store = described_class.new(full.url, full.url, "connections_full")

      raised = ->(client) { client.get("k") rescue $ERROR_INFO } # rubocop:disable Style/RescueModifier
      plain = raised.call(Redis.new(url: full.url))
      ours = raised.call(store)

      expect([ours.class, ours.message]).to eq([plain.class, plain.message])
      expect(ours).to be_a(Redis::CommandError).and have_attributes(message: /max number of clients/)
    ensure
      holder&.close
      store&.close
    end

    it "names any errno a connection meets as Ruby's Errno class, as redis-rb's message does" do
      Dir.mktmpdir do |dir|
        File.write(File.join(dir, "file"), "")
        path = File.join(dir, "file", "redis.sock") # a file where a directory should be: ENOTDIR
        store = described_class.new({ path: path }, { path: path }, "connections_errno")

        expect { store.get("k") }.to raise_error(Redis::CannotConnectError, /\(Errno::ENOTDIR\)\z/)
        expect { Redis.new(path: path).get("k") }.to raise_error(Errno::ENOTDIR)
      ensure
        store&.close
      end
    end
  end

  describe "how a store is given" do
    it "reads a ::Redis client's options: db, password and id" do
      server = dedicated_redis_server("--requirepass", "s3cret")
      store = multi_store(server.client(db: 3, password: "s3cret", id: "cache-worker"))

      store.set("k", "v")

      inspector = server.client(db: 3, password: "s3cret")
      expect(inspector.get("k")).to eq("v")
      expect(server.client(password: "s3cret").get("k")).to be_nil
      expect(store.call(%i[client getname])).to eq("cache-worker")
      expect(store.id).to eq("cache-worker")
    end

    it "accepts a URL with credentials and db" do
      server = dedicated_redis_server("--requirepass", "s3cret")
      store = multi_store("redis://:s3cret@127.0.0.1:#{server.port}/4")

      store.set("k", "from-url")

      expect(server.client(db: 4, password: "s3cret").get("k")).to eq("from-url")
      expect(store.connection).to include(host: "127.0.0.1", port: server.port, db: 4)
    end

    it "accepts a Hash of redis-rb options, including a unix socket path" do
      store = multi_store({ path: secondary_server.socket_path, db: 2 })

      store.set("k", "over-unix")

      expect(secondary_server.client(db: 2).get("k")).to eq("over-unix")
      expect(store.connection[:location]).to eq(secondary_server.socket_path)
    end

    it "raises redis-rb's CommandError for a wrong password, like redis-rb" do
      server = dedicated_redis_server("--requirepass", "right")
      store = multi_store({ port: server.port, password: "wrong" })

      expect { store.ping }.to raise_error(Redis::CommandError, /WRONGPASS/)
    end

    it "never shows a password in inspect, to_s or id" do
      store = multi_store("redis://:hunter2@127.0.0.1:#{secondary_server.port}/0",
                          primary: "redis://user:hunter2@127.0.0.1:#{primary_server.port}/1")

      [store.inspect, store.to_s, store.id].each do |text|
        expect(text).not_to include("hunter2")
      end
      expect(store.inspect).to include("127.0.0.1:#{primary_server.port}/1", "127.0.0.1:#{secondary_server.port}/0")
    end
  end

  describe "waiting for replies (spin_wait)" do
    it "returns the same replies polling first (the default), sleeping at once, or with a long budget" do
      [{}, { spin_wait: 0 }, { spin_wait: 0.001 }].each do |options|
        store = multi_store(secondary_server.url, **options)

        expect(store.set("k", "v")).to eq("OK")
        # Slower than any budget: the poll gives up and the read sleeps until the reply comes.
        expect(store.call(%i[debug sleep 0.02])).to eq("OK")
        expect(Array.new(200) { store.get("k") }.uniq).to eq(["v"])
        expect(store.blpop("empty", timeout: 0.05)).to be_nil
        store.close
      end
    end

    it "refuses a budget that is negative or longer than 10 ms" do
      [-0.001, 0.5].each do |budget|
        expect { multi_store(secondary_server.url, spin_wait: budget) }.to raise_error(ArgumentError, /spin_wait/)
      end
    end
  end

  describe "connecting" do
    it "connects lazily: building a MultiStore for a server that is down does not raise" do
      closed_port = RedisServers.free_port
      store = multi_store({ port: closed_port })

      expect(store.connected?).to be(false)
      expect { store.get("k") }.to raise_error(
        Redis::CannotConnectError, "Error connecting to Redis on 127.0.0.1:#{closed_port} (Errno::ECONNREFUSED)"
      )
    end

    it "reports connected? once a command went through, and not after close" do
      store = multi_store(secondary_server.url)
      expect(store.connected?).to be(false)

      store.ping
      expect(store.connected?).to be(true)

      store.close
      expect(store.connected?).to be(false)
      expect(store.ping).to eq("PONG")
    end

    it "reconnects once after the server dropped an idle connection, as redis-rb does" do
      store = multi_store(secondary_server.url)
      store.call(%i[client setname victim])
      secondary_server.client.call(%i[client kill skipme yes type normal])
      sleep 0.01 # a connection unused for more than a millisecond is looked at before use

      expect(store.set("after-kill", "1")).to eq("OK")
      expect(secondary_server.client.get("after-kill")).to eq("1")
    end

    it "sends a read again on a fresh connection however soon after its last use the server dropped it" do
      store = multi_store(secondary_server.url)
      secondary_server.client.set("read-after-kill", "1")
      store.call(%i[client setname victim])
      secondary_server.client.call(%i[client kill skipme yes type normal])

      expect(store.get("read-after-kill")).to eq("1")
    end

    it "keeps working after the server restarts" do
      server = dedicated_redis_server
      store = multi_store({ port: server.port })
      store.set("k", "before")

      server.restart

      expect(store.get("k")).to be_nil
      expect(store.set("k", "after")).to eq("OK")
    end

    it "honours the read timeout with redis-rb's exception" do
      store = multi_store({ port: secondary_server.port, timeout: 0.2, reconnect_attempts: 0 })
      plain = secondary_server.client(timeout: 0.2, reconnect_attempts: 0)

      expect { plain.call(%i[debug sleep 0.6]) }.to raise_error(Redis::TimeoutError, "Connection timed out")
      expect { store.call(%i[debug sleep 0.6]) }.to raise_error(Redis::TimeoutError, "Connection timed out")
      secondary_server.client.ping # waits until the server is done sleeping
      expect(store.ping).to eq("PONG")
    end

    it "lets a blocking command wait for its own timeout beyond the read timeout" do
      store = multi_store({ port: secondary_server.port, timeout: 0.1 })

      expect(store.blpop("empty-list", timeout: 0.4)).to be_nil
    end

    it "select changes the database for later calls" do
      store = multi_store(secondary_server.url)
      store.select(6)
      store.set("k", "in-6")

      expect(secondary_server.client(db: 6).get("k")).to eq("in-6")
      expect(store.connection[:db]).to eq(6)
    end
  end
end
