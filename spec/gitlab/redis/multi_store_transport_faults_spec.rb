# frozen_string_literal: true

require "socket"

# What the wire can do to a call: a reply that times out half-way through a batch, a connection
# killed mid-pipeline, a pooled connection the server closed while it sat idle, a hostile server
# announcing a terabyte, a signal handler that re-enters the client. Each against real
# redis-servers (or a fake one where a real server cannot misbehave that way), checking what each
# store holds afterwards, not only what the caller got.
RSpec.describe Gitlab::Redis::MultiStore, "faults on the wire" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:reports) { [] }
  let(:instance_name) { "wire" }
  let(:dual_write) { :use_primary_and_secondary_stores_for_wire }

  def multi_store(primary, secondary, **options)
    described_class.new(primary, secondary, instance_name, feature_flags: flags,
                                                           on_error: ->(e, ctx) { reports << [e, ctx] }, **options)
  end

  # A Lua script that keeps the server busy for `seconds`, the way a slow command does.
  def busy_script(seconds)
    "local t = redis.call('TIME'); local s = t[1] + t[2] / 1e6; " \
      "repeat t = redis.call('TIME') until t[1] + t[2] / 1e6 - s > #{seconds}; return 1"
  end

  def outcome
    yield
    :returned
  rescue StandardError => e
    e.class
  end

  describe "a batch is never sent twice" do
    let(:server) { dedicated_redis_server }
    let(:store) do
      multi_store(primary_server.url, { host: "127.0.0.1", port: server.port, read_timeout: 0.5 })
    end

    it "does not re-send a pipeline whose first reply was read when a later one times out" do
      # WAIT with no replica blocks this client for 1.5 s; the INCR's reply comes at once.
      result = outcome { store.pipelined { |p| p.incr("counter"); p.call(:wait, 1, 1500) } }
      sleep 1.3 # whatever was sent has run by now

      expect(result).to eq(Redis::TimeoutError)
      expect(server.client.get("counter")).to eq("1")
      expect(primary_server.client.get("counter")).to be_nil
    end

    it "does not re-send a pipeline whose connection is killed after its first reply" do
      result = outcome do
        store.pipelined do |p|
          p.incr("counter")
          p.call(:client, :kill, :type, :normal, :skipme, :no)
          p.ping
        end
      end
      sleep 0.2

      expect(result).to eq(Redis::ConnectionError)
      expect(server.client.get("counter")).to eq("1")
    end

    it "does not re-send a MULTI whose reply times out before any came back: the server may be running it" do
      # One write carries the whole transaction, so the server answers nothing before EXEC is done.
      result = outcome do
        store.multi { |t| t.incr("counter"); t.set("pad", "x" * 20_000); t.eval(busy_script(0.7)) }
      end
      sleep 1.0

      expect(result).to eq(Redis::TimeoutError)
      expect(server.client.get("counter")).to eq("1")
    end

    it "does not re-send a single command whose reply timed out (unlike redis-rb 4.8, which may apply it twice)" do
      incr_slowly = "redis.call('INCR', KEYS[1]); #{busy_script(0.7)}"

      result = outcome { store.eval(incr_slowly, keys: ["counter"]) }
      sleep 1.0

      expect(result).to eq(Redis::TimeoutError)
      expect(server.client.get("counter")).to eq("1")
    end

    it "does not re-send a dual-written pipeline on either store when the replies time out" do
      flags.enable(dual_write)
      other = dedicated_redis_server
      store = multi_store({ host: "127.0.0.1", port: other.port, read_timeout: 0.5 },
                          { host: "127.0.0.1", port: server.port, read_timeout: 0.5 })

      result = outcome { store.pipelined { |p| p.incr("counter"); p.call(:wait, 1, 1500) } }
      sleep 1.3

      expect(result).to eq(Redis::TimeoutError)
      expect([server.client.get("counter"), other.client.get("counter")]).to eq(%w[1 1])
    end

    it "still reconnects and sends a command once more when the pooled connection was found closed" do
      store.set("counter", "0")
      server.client.call(:client, :kill, :type, :normal) # every idle pooled connection, closed
      sleep 0.01 # a connection unused for more than a millisecond is looked at before use

      expect(store.incr("counter")).to eq(1)
      expect(server.client.get("counter")).to eq("1")
    end

    context "when the server runs a batch, then closes the connection before any reply (its replies " \
            "overflow the client output buffer limit)" do
      let(:server) { dedicated_redis_server("--client-output-buffer-limit", "normal 64kb 0 0") }

      before { server.client.set("big", "x" * 100_000) }

      it "does not re-send a pipeline: its INCR ran once" do
        expect(outcome { store.pipelined { |p| p.incr("counter"); p.get("big") } }).to eq(Redis::ConnectionError)
        expect(server.client.get("counter")).to eq("1")
      end

      it "does not re-send a transaction" do
        expect(outcome { store.multi { |t| t.incr("counter"); t.get("big") } }).to eq(Redis::ConnectionError)
        expect(server.client.get("counter")).to eq("1")
      end

      it "does not re-send a lone write whose reply overflowed it (redis-rb 4.8 would: 2,000 jobs popped for 1,000)" do
        server.client.rpush("jobs", Array.new(3000) { |i| "job-#{i}-#{'x' * 100}" }) # 1,000 of them: > 64 kB

        expect(outcome { store.lpop("jobs", 1000) }).to eq(Redis::ConnectionError)
        expect(server.client.llen("jobs")).to eq(2000)
      end

      it "re-syncs the other store of a dual-written pipeline from the default one, which ran it once" do
        flags.enable(dual_write)

        expect(outcome { store.pipelined { |p| p.incr("counter"); p.get("big") } }).to eq(Redis::ConnectionError)
        100.times { store.migration_status[:journal_keys].zero? ? break : sleep(0.05) }
        expect([server.client.get("counter"), primary_server.client.get("counter")]).to eq(%w[1 1])
      end
    end
  end

  describe "commands in doubt: sent, their reply timed out, maybe still to run" do
    let(:busy) { dedicated_redis_server }
    let(:store) do
      multi_store({ host: "127.0.0.1", port: busy.port, read_timeout: 0.25 }, secondary_server.url)
    end

    # The primary (the non-default store) runs a script for `seconds`: a write sent meanwhile
    # times out for the MultiStore and runs when the script ends.
    def keep_primary_busy(seconds)
      client = busy.client
      Thread.new { client.eval(busy_script(seconds)) }.tap { sleep 0.1 }
    end

    before do
      flags.enable(dual_write)
      store.set("counter", "0")
      expect(store.verify(repair: true).in_agreement?).to be(true)
    end

    it "are named by migration_status, which is not safe to switch until the store has run them" do
      script = keep_primary_busy(1.0)
      store.incr("counter")

      status = store.migration_status
      expect(status[:requests_in_doubt]).to eq(primary: 1, secondary: 0)
      expect(status[:reasons]).to include(a_string_matching(/connections to the primary store carry commands that timed out/))
      expect(status[:safe_to_switch]).to be(false)

      script.join
      sleep 0.2 # the script ended, the INCR ran, the server closed the connection
      expect(store.migration_status[:requests_in_doubt]).to eq(primary: 0, secondary: 0)
    end

    it "are waited for by verify, so it compares what the stores end up holding" do
      script = keep_primary_busy(1.0)
      store.incr("counter")

      report = store.verify(repair: true)

      expect(report.in_agreement?).to be(true)
      expect([busy.client.get("counter"), secondary_server.client.get("counter")]).to eq(%w[1 1])
      script.join
    end

    it "make verify give up with a TimeoutError naming the store when it does not run them in 5 s" do
      Process.kill(:STOP, busy.pid)
      resume = Thread.new { sleep 6; Process.kill(:CONT, busy.pid) }
      store.incr("counter")

      expect { store.verify }.to raise_error(Redis::TimeoutError, /has not finished commands that timed out earlier/)
      resume.join
      expect(store.verify(repair: true).in_agreement?).to be(true)
      expect([busy.client.get("counter"), secondary_server.client.get("counter")]).to eq(%w[1 1])
    ensure
      Process.kill(:CONT, busy.pid)
    end
  end

  describe "a pooled connection the server closed while idle (redis.conf `timeout`)" do
    it "is replaced before the next write, which reaches both stores with nothing reported or journaled" do
      flags.enable(dual_write)
      closing = dedicated_redis_server("--timeout", "1")
      store = multi_store(closing.url, secondary_server.url)
      store.set("k", "1")
      sleep 2.5 # the new store has closed the idle connection

      expect(store.set("k", "2")).to eq("OK")
      expect(closing.client.get("k")).to eq("2")
      expect(secondary_server.client.get("k")).to eq("2")
      expect(reports).to be_empty
      expect(store.migration_status[:journal_keys]).to eq(0)
    end
  end

  describe "a hostile or corrupt server" do
    # Answers the handshake, then every GET with a bulk header announcing `length` bytes and
    # three bytes of it.
    def fake_server(length)
      listener = TCPServer.new("127.0.0.1", 0)
      thread = Thread.new do
        loop do
          socket = listener.accept
          Thread.new(socket) do |sock|
            loop do
              chunk = sock.readpartial(65_536)
              info = "# Server\r\nrun_id:#{'f' * 40}\r\n"
              sock.write(chunk.include?("info") ? "$#{info.bytesize}\r\n#{info}\r\n" : "$#{length}\r\nabc")
            end
          rescue IOError, SystemCallError
            sock.close
          end
        end
      end
      [listener, thread]
    end

    it "refuses a bulk length beyond Redis's 512 MB with a ConnectionError, without allocating it" do
      listener, thread = fake_server(1_000_000_000_000)
      store = multi_store(primary_server.url, { host: "127.0.0.1", port: listener.addr[1], read_timeout: 1 })
      rss_before = File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i

      expect { store.get("x") }.to raise_error(Redis::ConnectionError, /512 MB/)
      expect { store.get("x") }.to raise_error(Redis::ConnectionError, /512 MB/) # and again, on a new connection
      expect(File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i - rss_before).to be < 50_000
    ensure
      thread&.kill
      listener&.close
    end

    it "raises redis-rb's ProtocolError for a reply that begins with a byte no reply begins with" do
      listener = TCPServer.new("127.0.0.1", 0)
      thread = Thread.new do
        loop do
          Thread.new(listener.accept) do |sock|
            loop do
              chunk = sock.readpartial(65_536)
              info = "# Server\r\nrun_id:#{'e' * 40}\r\n"
              sock.write(chunk.include?("info") ? "$#{info.bytesize}\r\n#{info}\r\n" : "?what\r\n")
            end
          rescue IOError, SystemCallError
            sock.close
          end
        end
      end
      store = multi_store(primary_server.url, { host: "127.0.0.1", port: listener.addr[1], read_timeout: 1 })

      expect { store.get("x") }.to raise_error(Redis::ProtocolError, /Got '\?' as initial reply byte/)
    ensure
      thread&.kill
      listener&.close
    end

    it "reads a value announced as 100 MB but never sent into a buffer that grows as bytes arrive" do
      listener, thread = fake_server(100_000_000)
      store = multi_store(primary_server.url, { host: "127.0.0.1", port: listener.addr[1], read_timeout: 0.3 })
      rss_before = File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i

      expect { store.get("x") }.to raise_error(Redis::TimeoutError)
      expect(File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i - rss_before).to be < 50_000
    ensure
      thread&.kill
      listener&.close
    end
  end

  describe "signal handlers" do
    it "ends a subscription when a trap handler unsubscribes, as with redis-rb" do
      store = multi_store(primary_server.url, secondary_server.url)
      previous = trap("USR2") { store.unsubscribe }
      Thread.new { sleep 0.3; Process.kill("USR2", Process.pid) }
      events = []
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)

      store.subscribe("chan") do |on|
        on.subscribe { |channel, count| events << [:subscribe, channel, count] }
        on.unsubscribe { |channel, count| events << [:unsubscribe, channel, count] }
      end

      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 2
      expect(events).to eq([[:subscribe, "chan", 1], [:unsubscribe, "chan", 0]])
      expect(store.set("after", "1")).to eq("OK")
    ensure
      trap("USR2", previous || "DEFAULT")
    end

    it "raises ThreadError, instead of hanging, when a trap handler calls a connection this thread has pinned" do
      store = multi_store(primary_server.url, secondary_server.url)
      seen = nil
      previous = trap("USR2") do
        store.get("k")
      rescue StandardError => e
        seen = e
      end
      store.watch("k") do
        Thread.new { sleep 0.2; Process.kill("USR2", Process.pid) }
        store.blpop("list", timeout: 0.6) # pinned by the watch; the signal arrives meanwhile
      end

      expect(seen).to be_a(ThreadError)
      expect(store.get("k")).to be_nil
    ensure
      trap("USR2", previous || "DEFAULT")
    end

    it "lets a trap handler run a transaction of its own, pinning a connection from trap context" do
      store = multi_store(primary_server.url, secondary_server.url)
      result = nil
      previous = trap("USR2") do
        result = store.multi { |tx| tx.incr("from-trap") }
      rescue StandardError => e
        result = e
      end

      Process.kill("USR2", Process.pid)
      sleep 0.01 until result

      expect(result).to eq([1])
      expect(secondary_server.client.get("from-trap")).to eq("1")
    ensure
      trap("USR2", previous || "DEFAULT")
    end
  end

  describe "timeouts redis-rb reads its own way" do
    let(:store) { multi_store(primary_server.url, secondary_server.url) }

    it "raises RangeError for subscribe_with_timeout(Float::INFINITY) as redis-rb does, and keeps working" do
      expect { store.subscribe_with_timeout(Float::INFINITY, "chan") { |_on| nil } }
        .to raise_error(RangeError, "Inf out of Time range")
      expect { store.subscribe_with_timeout(1e30, "chan") { |_on| nil } }
        .to raise_error(RangeError, /out of Time range/)
      expect(store.set("k", "v")).to eq("OK")
    end

    it "raises RangeError for an infinite or huge blocking timeout, as redis-rb's wait for the reply does" do
      # (redis-rb sends the command first; when the server's refusal is already there it raises
      # that instead: a race this client does not reproduce.)
      expect { store.blpop("list", timeout: Float::INFINITY) }.to raise_error(RangeError, "Inf out of Time range")
      expect { store.blpop("list", timeout: 1e30) }.to raise_error(RangeError, /\A1000000000000000019884624838656\.0+ out/)
      store.watch("list") do
        expect { store.brpop("list", timeout: Float::INFINITY) }.to raise_error(RangeError)
      end
      expect(store.lpush("list", "x")).to eq(1)
    end

    it "raises redis-rb's TypeError for a blocking timeout that is not a number" do
      expect { store.blpop("list", timeout: "1") }.to raise_error(TypeError, /String can't be coerced into Float/)
      expect { secondary_server.client.blpop("list", timeout: "1") }.to raise_error(TypeError, /String can't be coerced/)
    end

    it "raises redis-rb's ArgumentError for subscribe_with_timeout with a timeout that is not positive" do
      [-1, Float::NAN, -Float::INFINITY].each do |timeout|
        expect { store.subscribe_with_timeout(timeout, "chan") { |_on| nil } }.to raise_error(ArgumentError)
        expect { secondary_server.client.subscribe_with_timeout(timeout, "chan") { |_on| nil } }.to raise_error(ArgumentError)
      end
      expect(store.set("k", "v")).to eq("OK")
    end

    it "takes infinite and negative configured timeouts as redis-rb does: wait forever" do
      store = multi_store(primary_server.url, { url: secondary_server.url, timeout: Float::INFINITY,
                                                connect_timeout: -1 }, breaker_cool_down: Float::INFINITY)

      expect(store.set("k", "v")).to eq("OK")
      expect(secondary_server.client.get("k")).to eq("v")
    end
  end
end
