# frozen_string_literal: true

require "timeout"
require "rbconfig"

RSpec.describe Gitlab::Redis::MultiStore, "threads, interrupts and fork" do
  subject(:store) { described_class.new(primary_server.url, secondary_server.url, "concurrency") }

  it "releases the GVL while a blocking pop waits, so other threads keep running" do
    popper = Thread.new { store.blpop("jobs", timeout: 5) }
    sleep 0.05 until secondary_server.client.call(%i[client list]).include?("cmd=blpop")

    pings = 50.times.map { store.ping }

    expect(pings.uniq).to eq(["PONG"])
    expect(popper).to be_alive
    store.rpush("jobs", "job-1")
    expect(popper.value).to eq(%w[jobs job-1])
  end

  it "stays interruptible by Timeout while blocked, and usable afterwards" do
    expect { Timeout.timeout(0.3) { store.blpop("never", timeout: 0) } }.to raise_error(Timeout::Error)
    expect(store.set("after-timeout", "ok")).to eq("OK")
  end

  it "lets Thread#kill end a thread blocked on Redis" do
    blocked = Thread.new { store.brpop("never", timeout: 0) }
    sleep 0.05 until blocked.status == "sleep"
    sleep 0.1

    blocked.kill

    expect(blocked.join(2)).to eq(blocked)
    expect(store.ping).to eq("PONG")
  end

  it "closes the pinned connections of threads killed between WATCH and EXEC, though their Thread objects live on" do
    server = dedicated_redis_server
    store = described_class.new(primary_server.url, server.url, "concurrency")
    clients = -> { server.client.call(:client, :list, :type, :normal).lines.size }
    killed = Array.new(20) { Thread.new { store.watch("k"); sleep } }
    sleep 0.01 until killed.all? { |thread| thread.status == "sleep" }
    killed.each(&:kill).each(&:join) # still referenced: their thread-locals are not collected
    expect(clients.call).to be > 20

    store.watch("k") { store.multi { |tx| tx.set("k", "v") } }

    expect(clients.call).to be <= 3 # the one asking, and what the pool keeps
    expect(server.client.get("k")).to eq("v")
  end

  it "lets Ctrl-C (SIGINT) interrupt a process blocked on Redis" do
    script = <<~RUBY
      $LOAD_PATH.unshift(#{File.expand_path('../../../lib', __dir__).inspect})
      require "gitlab_multistore"
      store = Gitlab::Redis::MultiStore.new(#{primary_server.url.inspect}, #{secondary_server.url.inspect}, "sigint")
      $stdout.puts "blocking"; $stdout.flush
      begin
        store.blpop("never", timeout: 0)
      rescue Interrupt
        puts "interrupted"
      end
    RUBY
    IO.popen([RbConfig.ruby, "-e", script], err: File::NULL) do |io|
      expect(io.gets).to eq("blocking\n")
      sleep 0.3
      Process.kill(:INT, io.pid)
      expect(Timeout.timeout(5) { io.gets }).to eq("interrupted\n")
    end
  end

  it "serves 16 threads sharing one instance without mixing replies" do
    threads = 16.times.map do |t|
      Thread.new do
        200.times.all? do |i|
          key = "thread-#{t}-#{i}"
          store.set(key, key)
          store.get(key) == key && store.incr("counter").is_a?(Integer)
        end
      end
    end

    expect(threads.map(&:value)).to all(be(true))
    expect(secondary_server.client.get("counter")).to eq("3200")
  end

  it "opens its own connections in a forked child and leaves the parent's alone" do
    parent_connection = store.call(%i[client id])
    reader, writer = IO.pipe

    child = fork do
      reader.close
      child_connection = store.call(%i[client id])
      store.set("written-by-child", Process.pid)
      writer.puts(child_connection)
      writer.close
      exit!(0)
    end
    writer.close
    child_connection = Integer(reader.read)
    Process.wait(child)

    expect($?.exitstatus).to eq(0)
    expect(child_connection).not_to eq(parent_connection)
    expect(store.call(%i[client id])).to eq(parent_connection)
    expect(store.get("written-by-child")).to eq(child.to_s)
  end

  it "pins WATCH to the calling thread's connection until EXEC" do
    store.set("balance", 10)
    other = described_class.new(primary_server.url, secondary_server.url, "concurrency")

    result = store.watch("balance") do
      other.set("balance", 99)
      store.multi { |tx| tx.incrby("balance", 1) }
    end

    expect(result).to be_nil
    expect(secondary_server.client.get("balance")).to eq("99")
    expect(store.watch("balance") { store.multi { |tx| tx.incrby("balance", 1) } }).to eq([100])
  end

  it "runs a block-less MULTI on one connection even with other threads calling" do
    expect(store.multi).to eq("OK")
    noise = Thread.new { 20.times { store.set("noise", "x") } }
    expect(store.set("queued", "1")).to eq("QUEUED")
    expect(store.incr("queued-counter")).to eq("QUEUED")
    noise.join

    expect(store.exec).to eq(["OK", 1])
    expect(secondary_server.client.get("noise")).to eq("x")
  end

  it "subscribes on a pinned connection and returns it after the last unsubscribe" do
    received = []
    subscribed = Queue.new
    listener = Thread.new do
      store.subscribe("news") do |on|
        # Its own confirmation: a subscriber another example left on the shared server would
        # make PUBSUB NUMSUB positive before this one is listening.
        on.subscribe { subscribed << true }
        on.message do |channel, message|
          received << [channel, message]
          store.unsubscribe if message == "bye"
        end
      end
    end
    publisher = secondary_server.client
    subscribed.pop

    publisher.publish("news", "hello")
    publisher.publish("news", "bye")

    expect(listener.join(5)).to eq(listener)
    expect(received).to eq([%w[news hello], %w[news bye]])
    expect(store.subscribed?).to be(false)
    expect(store.ping).to eq("PONG")
  end

  it "raises TimeoutError from subscribe_with_timeout when nothing arrives" do
    expect { store.subscribe_with_timeout(0.2, "quiet") { |on| on.message {} } }
      .to raise_error(Redis::TimeoutError)
    expect(store.ping).to eq("PONG")
  end

  # Timeout ends the block with a throw and Thread#kill with no exception at all: neither passes
  # through a rescue, so only the last reply can tell the connection is still subscribed.
  {
    "Timeout.timeout" => ->(store) { Timeout.timeout(0.3) { store.subscribe("quiet") { |on| on.message {} } } },
    "Thread#kill" => lambda do |store|
      subscriber = Thread.new { store.subscribe("quiet") { |on| on.message {} } }
      sleep 0.01 until subscriber.status == "sleep"
      sleep 0.1
      subscriber.kill.join
    end
  }.each do |interrupt, end_subscription|
    it "closes a subscription's connection that #{interrupt} ended, instead of lending it to the next writer" do
      begin
        end_subscription.call(store)
      rescue Timeout::Error
        nil
      end

      counts = Array.new(4) { Thread.new { store.incr("after-subscription") }.value }

      expect(counts).to eq([1, 2, 3, 4])
      expect(secondary_server.client.get("after-subscription")).to eq("4")
    end
  end
end
