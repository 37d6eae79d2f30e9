# frozen_string_literal: true

RSpec.describe Gitlab::Redis::MultiStore, "with a Redis Cluster store" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:reports) { [] }

  before(:all) { @cluster = LocalRedisCluster.new }
  after(:all) { @cluster&.cleanup }
  after { @cluster.flushall }

  let(:cluster) { @cluster }

  # The new store is the cluster; the old one a single server, as in a standalone → cluster move.
  def store_onto_cluster(primary = cluster.urls)
    described_class.new(primary, secondary_server.url, "cluster_store",
                        feature_flags: flags, on_error: ->(e, c) { reports << [e, c] })
  end

  def cluster_only
    flags.enable(:use_primary_store_as_default_for_cluster_store)
    store_onto_cluster
  end

  describe "construction" do
    it "accepts a ::Redis built with cluster:, a Hash with cluster: and an Array of node URLs" do
      # The last form is what Gitlab::Redis::Wrapper#params makes of a `cluster:` config entry.
      wrapper_params = { cluster: cluster.servers.map { |s| { host: "127.0.0.1", port: s.port } }, db: 0 }
      forms = [Redis.new(cluster: cluster.urls), { cluster: cluster.urls }, cluster.urls, wrapper_params]
      flags.enable(:use_primary_store_as_default_for_cluster_store)

      forms.each_with_index do |form, i|
        store_onto_cluster(form).set("form:#{i}", i.to_s)
      end

      expect(forms.each_index.map { |i| cluster.server_for("form:#{i}").client.get("form:#{i}") }).to eq(%w[0 1 2 3])
    end

    it "refuses a Redis::Namespace over a cluster client: the prefix would change the keys' slots" do
      require "redis/namespace"
      namespaced = Redis::Namespace.new("app", redis: Redis.new(cluster: cluster.urls))

      expect { store_onto_cluster(namespaced) }.to raise_error(ArgumentError, /Redis Cluster client is not supported/)
    end

    it "refuses a cluster option that is not a list, with redis-rb's error" do
      expect { store_onto_cluster({ cluster: "redis://127.0.0.1:1" }) }
        .to raise_error(Redis::InvalidClientOptionError, /must be an Array/)
    end

    it "names every node in its id, as redis-rb's cluster client does" do
      expect(cluster_only.id).to eq(cluster.urls.sort.join(" "))
      expect(cluster_only.inspect).to include("primary=#{cluster.urls.sort.join(' ')}")
    end
  end

  describe "routing by slot" do
    it "sends each key to the master of its slot" do
      store = cluster_only
      keys = %w[alpha beta gamma delta epsilon]

      keys.each { |key| store.set(key, "v-#{key}") }

      expect(keys.map { |key| cluster.server_for(key).client.get(key) }).to eq(keys.map { |key| "v-#{key}" })
      expect(keys.map { |key| store.get(key) }).to eq(keys.map { |key| "v-#{key}" })
      expect(cluster.servers.map { |s| s.client.dbsize }.count(&:positive?)).to be > 1
    end

    it "splits MGET, MSET, DEL, EXISTS, UNLINK and TOUCH over slots and combines the replies" do
      store = cluster_only

      expect(store.mset("a", 1, "b", 2, "c", 3, "{a}x", 4)).to eq("OK")
      expect(store.mget("c", "missing", "a", "{a}x", "b")).to eq(["3", nil, "1", "4", "2"])
      expect(store.exists("a", "b", "missing")).to eq(2)
      expect(store.touch("a", "b", "c")).to eq(3)
      expect(store.del("a", "b", "missing")).to eq(2)
      expect(store.unlink("c", "{a}x")).to eq(2)
      expect(cluster.servers.sum { |s| s.client.dbsize }).to eq(0)
    end

    it "lets the server refuse other cross-slot commands with redis-rb's CROSSSLOT error" do
      store = cluster_only
      expect(cluster.slot("a")).not_to eq(cluster.slot("b"))

      expect { store.sunionstore("a", "b") }.to raise_error(Redis::CommandError, /\ACROSSSLOT/)
      expect { store.msetnx("a", 1, "b", 2) }.to raise_error(Redis::CommandError, /\ACROSSSLOT/)
      expect(store.sunionstore("{s}dest", "{s}a")).to eq(0)
    end

    it "runs scripts on the node of their keys" do
      store = cluster_only

      expect(store.eval("return redis.call('set', KEYS[1], ARGV[1])", keys: ["scripted"], argv: ["v"])).to eq("OK")
      expect(cluster.server_for("scripted").client.get("scripted")).to eq("v")
      sha = store.script(:load, "return redis.call('get', KEYS[1])")
      expect(cluster.servers.map { |s| s.client.script(:exists, sha) }).to all(be(true))
      expect(store.evalsha(sha, keys: ["scripted"])).to eq("v")
    end

    it "loads a script the cluster lost before running an EVALSHA there again during dual-write" do
      flags.enable(:use_primary_and_secondary_stores_for_cluster_store)
      store = store_onto_cluster
      sha = store.script(:load, "return redis.call('incr', KEYS[1])")
      cluster.servers.each { |server| server.client.script(:flush) }

      expect(store.evalsha(sha, keys: ["scripted"])).to eq(1)
      expect([cluster.server_for("scripted").client.get("scripted"), secondary_server.client.get("scripted")]).to eq(%w[1 1])
      expect(reports).to eq([])
    end

    it "waits on a blocking pop on the key's node" do
      store = cluster_only
      pusher = Thread.new { sleep 0.2; cluster.server_for("queue").client.rpush("queue", "job") }

      expect(store.blpop("queue", timeout: 5)).to eq(%w[queue job])
      pusher.join
    end

    it "watches and runs a transaction on the key's node" do
      store = cluster_only
      store.set("{acct}balance", 10)

      result = store.watch("{acct}balance") do
        balance = store.get("{acct}balance").to_i
        store.multi do |tx|
          tx.set("{acct}balance", balance - 3)
          tx.incr("{acct}withdrawals")
        end
      end

      expect(result).to eq(["OK", 1])
      expect(cluster.server_for("{acct}balance").client.mget("{acct}balance", "{acct}withdrawals")).to eq(%w[7 1])
    end
  end

  it "opens a forked child's own connections to every node" do
    store = cluster_only
    store.mset("a", 1, "b", 2, "c", 3)

    pid = fork do
      worked = store.mget("a", "b", "c") == %w[1 2 3] && store.set("from-child", "1") == "OK"
      exit!(worked ? 0 : 1)
    end
    _, status = Process.wait2(pid)

    expect(status).to be_success
    expect(store.mget("a", "b", "c", "from-child")).to eq(%w[1 2 3 1])
  end

  it "runs a block-less multi on the node of the first key it queues, and discards it unsent" do
    store = cluster_only
    key = cluster.key_on(cluster.servers.last, "tx")

    expect(store.multi).to eq("OK")
    expect(store.set(key, 1)).to eq("QUEUED")
    expect(store.incr(key)).to eq("QUEUED")
    expect(store.exec).to eq(["OK", 2])

    store.multi
    store.set(key, 5)
    expect(store.discard).to eq("OK")
    expect(cluster.servers.last.client.get(key)).to eq("2")

    store.multi
    expect(store.discard).to eq("OK")
    expect(store.get(key)).to eq("2")
  end

  describe "commands over every master" do
    it "scans, counts and lists the keys of all masters" do
      store = cluster_only
      keys = Array.new(300) { |i| "scan:#{i}" }
      store.mset(*keys.flat_map { |k| [k, "v"] })

      expect(store.scan_each(match: "scan:*", count: 50).to_a.sort).to eq(keys.sort)
      expect(store.dbsize).to eq(300)
      expect(store.keys("scan:*")).to eq(keys.sort)
    end

    it "flushes every master" do
      store = cluster_only
      store.mset("a", 1, "b", 2, "c", 3)

      store.flushdb

      expect(cluster.servers.sum { |s| s.client.dbsize }).to eq(0)
    end
  end

  describe "pipelines" do
    it "sends one batch per node and returns the replies in the caller's order" do
      store = cluster_only
      keys = %w[alpha beta gamma delta epsilon]

      replies = store.pipelined do |pipeline|
        keys.each { |key| pipeline.set(key, key.upcase) }
        keys.each { |key| pipeline.get(key) }
        pipeline.mget(*keys)
      end

      expect(replies).to eq(["OK"] * 5 + keys.map(&:upcase) + [keys.map(&:upcase)])
    end

    it "runs a transaction whose keys share a node, and refuses one spread over nodes as redis-rb does" do
      store = cluster_only
      other = cluster.key_on(cluster.servers.find { |s| s != cluster.server_for("a") }, "b")

      expect(store.multi { |tx| tx.set("{t}a", 1); tx.incr("{t}b") }).to eq(["OK", 1])
      expect { store.multi { |tx| tx.set("a", 1); tx.set(other, 1) } }
        .to raise_error(Redis::Cluster::CrossSlotPipeliningError, /cross slot keys. \["a", "#{other}"\]/)
      expect(store.exists("a", other)).to eq(0)
    end
  end

  describe "resharding" do
    it "follows MOVED after a slot moved to another node and keeps using the new owner" do
      store = cluster_only
      source, target = cluster.servers.first(2)
      key = cluster.key_on(source)
      store.set(key, "before")

      cluster.move_slot(key, target)

      expect(store.get(key)).to eq("before")
      expect(store.set(key, "after")).to eq("OK")
      expect(target.client.get(key)).to eq("after")
      expect(store.pipelined { |pl| pl.get(key); pl.incr("#{key}:n") }).to eq(["after", 1])
    end

    it "follows ASK while a slot is being migrated" do
      store = cluster_only
      source, target = cluster.servers.last(2)
      moved = cluster.key_on(source, "moved")
      store.set(moved, "on-target")

      cluster.start_migration(moved, target)
      begin
        expect { source.client.get(moved) }.to raise_error(Redis::CommandError, /\AASK /)
        expect(store.get(moved)).to eq("on-target")
        expect(store.pipelined { |pl| pl.get(moved) }).to eq(["on-target"])
      ensure
        cluster.finish_migration
      end
      expect(store.get(moved)).to eq("on-target")
    end
  end

  describe "pub/sub" do
    it "delivers what the store publishes to its subscribers, whichever node each uses" do
      store = cluster_only
      received = Queue.new
      listener = Thread.new do
        store.subscribe("news") do |on|
          on.message do |_channel, message|
            received << message
            store.unsubscribe if message == "bye"
          end
        end
      end
      sleep 0.02 until cluster.servers.any? { |s| s.client.call(%i[pubsub numsub news]).last.positive? }

      # Redis Cluster forwards a PUBLISH to every node, so the publishing node does not matter.
      store.publish("news", "hello")
      cluster.servers.last.client.publish("news", "bye")

      expect(listener.join(5)).to eq(listener)
      expect(Array.new(2) { received.pop }).to eq(%w[hello bye])
    end
  end

  describe "a node that goes away" do
    it "fails only the commands for that node's slots, as redis-rb does, and recovers when it is back" do
      store = cluster_only
      lost, kept = cluster.servers.last, cluster.servers.first
      down_key = cluster.key_on(lost, "down")
      up_key = cluster.key_on(kept, "up")
      store.mset(down_key, "1", up_key, "1")

      lost.stop
      begin
        expect { store.get(down_key) }.to raise_error(Redis::CannotConnectError, /#{lost.port}/)
        expect(store.get(up_key)).to eq("1")
        expect { store.pipelined { |pl| pl.get(up_key); pl.get(down_key) } }.to raise_error(Redis::CannotConnectError)
        expect(store.pipelined { |pl| pl.get(up_key); pl.incr("{#{up_key}}:n") }).to eq(["1", 1])
      ensure
        lost.start(port: lost.port)
        cluster.wait_until_healthy
      end

      expect(store.set(down_key, "2")).to eq("OK")
      expect(lost.client.get(down_key)).to eq("2")
    end

    it "reports, not raises, a node down on the non-default side during dual-write" do
      flags.enable(:use_primary_and_secondary_stores_for_cluster_store)
      store = store_onto_cluster
      lost = cluster.servers[1]
      key = cluster.key_on(lost, "dual")

      lost.stop
      begin
        expect(store.set(key, "kept-on-old")).to eq("OK")
      ensure
        lost.start(port: lost.port)
        cluster.wait_until_healthy
      end

      expect(secondary_server.client.get(key)).to eq("kept-on-old")
      expect(reports.map { |error, _| error.class }).to include(Redis::CannotConnectError)
    end
  end

  describe "a failover inside the cluster" do
    before(:all) { @replicated = LocalRedisCluster.new(masters: 3, replicas: 1) }
    after(:all) { @replicated&.cleanup }

    it "sends the command to the promoted replica once the old master stops answering" do
      flags.enable(:use_primary_store_as_default_for_cluster_store)
      store = store_onto_cluster(@replicated.urls)
      store.set("failover", "before")
      old_master = @replicated.server_for("failover")
      replica = @replicated.replica_of(old_master)
      # Replicated before the master goes (asked of the replica itself: READONLY lets it answer).
      reader = replica.client.tap { |r| r.call("READONLY") }
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      sleep 0.05 until reader.get("failover") == "before" || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      expect(reader.get("failover")).to eq("before")
      reader.close

      old_master.stop
      @replicated.wait_until_serving("failover", replica)

      # The first call meets a refused connection, reloads the slot map and goes to the new
      # master: nothing was sent to the old one, so nothing runs twice. (Until the cluster itself
      # has agreed on the new master, the call fails as it does with redis-rb.)
      expect(store.get("failover")).to eq("before")
      expect(store.set("failover", "after")).to eq("OK")
      expect(replica.client.get("failover")).to eq("after")
      expect(reports).to be_empty
    end
  end

  describe "moving a partition from a single Redis to the cluster" do
    it "dual-writes, backfills, verifies, switches and drops the old store with nothing lost" do
      old = secondary_server.client
      old.mset(*Array.new(500) { |i| ["old:#{i}", "v#{i}"] }.flatten)
      old.set("session:ttl", "s", ex: 600)
      old.hset("hash", "f1", "1", "f2", "2")
      old.sadd("set", %w[a b c])
      old.rpush("list", %w[x y z])
      store = store_onto_cluster

      flags.enable(:use_primary_and_secondary_stores_for_cluster_store)
      store.set("written:during:dual", "both")
      store.mset("m:1", 1, "m:2", 2, "m:3", 3)
      expect(old.get("written:during:dual")).to eq("both")
      expect(cluster.server_for("written:during:dual").client.get("written:during:dual")).to eq("both")

      backfill = store.backfill(count: 100)
      expect(backfill).to be_done.and be_ok
      expect(backfill.copied).to eq(504)

      verification = store.verify
      expect(verification).to be_in_agreement
      expect(verification.readiness).to eq(100.0)

      flags.enable(:use_primary_store_as_default_for_cluster_store)
      expect(store.get("old:42")).to eq("v42")
      expect(store.ttl("session:ttl")).to be_within(5).of(600)
      expect(store.hgetall("hash")).to eq("f1" => "1", "f2" => "2")
      expect(store.smembers("set").sort).to eq(%w[a b c])
      expect(store.lrange("list", 0, -1)).to eq(%w[x y z])

      flags.disable(:use_primary_and_secondary_stores_for_cluster_store)
      store.set("written:after:switch", "cluster-only")
      expect(old.exists?("written:after:switch")).to be(false)
      expect(store.mget("old:0", "old:499", "written:after:switch")).to eq(%w[v0 v499 cluster-only])
      expect(reports).to be_empty
    end

    it "backfills and verifies from the command line, the cluster named by its nodes' URLs" do
      require "gitlab_multistore/cli"
      secondary_server.client.mset(*Array.new(50) { |i| ["cli:#{i}", i.to_s] }.flatten)
      stores = ["--primary", cluster.urls.join(","), "--secondary", secondary_server.url]
      out = StringIO.new

      statuses = %w[backfill verify].map do |command|
        GitlabMultistore::CLI.new(out: out, err: StringIO.new, tty: false).run([command, *stores])
      end

      expect(statuses).to eq([0, 0])
      expect(out.string).to include("copied 50", "the stores agree")
      expect(cluster.servers.sum { |s| s.client.dbsize }).to eq(50)
    end

    describe "a cluster's masters copied and compared side by side" do
      let(:checkpoint) { File.join(Dir.mktmpdir("gitlab-multistore-lanes-"), "progress.json") }

      # The old store is the cluster here (a cluster -> single server move), so a backfill scans it.
      def store_off_cluster
        described_class.new(secondary_server.url, cluster.urls, "off_cluster",
                            feature_flags: flags, on_error: ->(e, c) { reports << [e, c] })
      end

      before do
        old = Redis.new(cluster: cluster.urls)
        3_000.times { |i| old.set("lane:#{i}", i.to_s) }
        old.close
        flags.enable(:use_primary_and_secondary_stores_for_off_cluster)
      end

      it "backfills a page of each master at every step, and resumes from each master's own cursor" do
        store = store_off_cluster
        scanned = []

        expect do
          store.backfill(count: 100, checkpoint: checkpoint) do |page|
            scanned << page.scanned
            raise Interrupt if scanned.size == 3 # a deploy stops it
          end
        end.to raise_error(Interrupt)
        saved = Base64.strict_decode64(JSON.parse(File.read(checkpoint)).dig("progress", "cursor"))
        report = store.backfill(count: 100, checkpoint: checkpoint, resume: true)

        aggregate_failures do
          # SCAN COUNT 100 on each of the 3 masters at once.
          expect(scanned.first).to be > 200
          expect(saved).to match(/\Alanes:\d+,\d+,\d+\z/)
          expect([report.scanned, report.copied, report.already_present]).to eq([3_000, 3_000, 0])
          expect(secondary_server.client.dbsize).to eq(3_000)
          expect(secondary_server.client.get("lane:2999")).to eq("2999")
          expect(File.exist?(checkpoint)).to be(false)
        end
      end

      it "verifies a page of each master at every step" do
        store = store_off_cluster
        store.backfill
        secondary_server.client.set("lane:7", "changed")
        checked = []

        report = store.verify(count: 100) { |page| checked << page.checked }

        aggregate_failures do
          expect(checked.first).to be > 200
          expect([report.checked, report.different, report.only_on_primary]).to eq([3_000, 1, 0])
        end
      end
    end

    it "verifies a cluster primary against the old store and repairs what differs" do
      old = secondary_server.client
      old.mset("same", "1", "differs", "old", "missing", "m")
      store = store_onto_cluster
      cluster.server_for("same").client.set("same", "1")
      cluster.server_for("differs").client.set("differs", "new")
      cluster.server_for("only:new").client.set("only:new", "x")

      check = store.verify
      expect(check).not_to be_in_agreement

      store.verify(repair: true)
      expect(store.verify).to be_in_agreement
      expect(cluster.server_for("differs").client.get("differs")).to eq("old")
      expect(cluster.server_for("only:new").client.exists?("only:new")).to be(false)
    end
  end
end
