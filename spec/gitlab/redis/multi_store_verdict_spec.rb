# frozen_string_literal: true

require "digest"
require "socket"

# `migration_status[:safe_to_switch]`, `verify` and `backfill` say yes only when the stores
# really hold the same data: not after a restart or a journal overflow that a backfill cannot
# undo, not when a store answers with errors, not because PFCOUNT touched one copy of an HLL,
# and repair copies from the store callers are answered from. Against real servers, looking at
# both stores.
RSpec.describe Gitlab::Redis::MultiStore, "verdicts" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:reports) { [] }
  let(:dual_write) { :use_primary_and_secondary_stores_for_verdicts }
  let(:primary_default) { :use_primary_store_as_default_for_verdicts }
  let(:primary) { primary_server.client }
  let(:secondary) { secondary_server.client }

  def multi_store(primary_store = primary_server.url, secondary_store = secondary_server.url, **options)
    described_class.new(primary_store, secondary_store, "verdicts", feature_flags: flags,
                                                                    on_error: ->(e, ctx) { reports << [e, ctx] }, **options)
  end

  def wait_until(seconds = 5)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    sleep 0.05 until yield || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  end

  describe "error replies are failures and differences, never data" do
    it "counts keys whose DUMP the old store refuses as failed, not expired, and the backfill is not ok" do
      secondary.call(:acl, :setuser, "nodump", "on", ">pw", "~*", "&*", "+@all", "-dump")
      5.times { |i| secondary.set("k#{i}", "v") }
      store = multi_store(primary_server.url, "redis://nodump:pw@127.0.0.1:#{secondary_server.port}/0")

      report = store.backfill

      expect([report.failed, report.expired, report.copied, report.ok?]).to eq([5, 0, 0, false])
      expect(primary.dbsize).to eq(0)
    ensure
      secondary.call(:acl, :deluser, "nodump")
    end

    it "counts keys whose EXISTS the new store refuses as failed, not already present" do
      primary.call(:acl, :setuser, "noexists", "on", ">pw", "~*", "&*", "+@all", "-exists")
      3.times { |i| secondary.set("k#{i}", "v") }
      store = multi_store("redis://noexists:pw@127.0.0.1:#{primary_server.port}/0", secondary_server.url)

      report = store.backfill

      expect([report.failed, report.already_present, report.ok?]).to eq([3, 0, false])
    ensure
      primary.call(:acl, :deluser, "noexists")
    end

    it "does not report stores whose values it may not read as in agreement" do
      [primary, secondary].each { |c| c.call(:acl, :setuser, "mig", "on", ">pw", "~*", "&*", "+@all", "-get", "-hgetall") }
      primary.set("s", "NEW")
      secondary.set("s", "old")
      primary.hset("h", "a", "1")
      secondary.hset("h", "a", "2")
      store = multi_store("redis://mig:pw@127.0.0.1:#{primary_server.port}/0",
                          "redis://mig:pw@127.0.0.1:#{secondary_server.port}/0")

      report = store.verify

      expect([report.agree, report.different, report.unreadable, report.in_agreement?]).to eq([0, 2, 2, false])
    ensure
      [primary, secondary].each { |c| c.call(:acl, :deluser, "mig") }
    end

    it "keeps re-syncing, instead of deleting, a journaled key whose DUMP the source refuses" do
      secondary.call(:acl, :setuser, "app", "on", ">pw", "~*", "&*", "+@all", "-dump")
      primary.call(:acl, :setuser, "app", "on", ">pw", "~*", "&*", "+@all", "-set")
      primary.set("k", "old")
      secondary.set("k", "old")
      flags.enable(dual_write)
      store = multi_store("redis://app:pw@127.0.0.1:#{primary_server.port}/0",
                          "redis://app:pw@127.0.0.1:#{secondary_server.port}/0")

      store.set("k", "new") # refused on the new store only: reported and journaled
      sleep 1 # re-sync had its rounds, each refused a DUMP on the old store

      expect(reports.map { |e, _| e.class }).to eq([Redis::CommandError])
      expect(primary.get("k")).to eq("old") # not deleted
      expect(store.migration_status[:journal_keys]).to eq(1)
      expect(store.get("k")).to eq("new") # read from the store that got the write
    ensure
      [primary, secondary].each { |c| c.call(:acl, :deluser, "app") }
    end
  end

  describe "safe_to_switch after what a backfill cannot undo" do
    before { flags.enable(dual_write) }

    it "still asks for a backfill when the new store restarted empty while one ran: it lost keys already copied" do
      failing = dedicated_redis_server
      store = multi_store(failing.url)
      secondary.pipelined { |p| 3000.times { |i| p.set("old:#{i}", "v") } }
      pages = 0

      report = store.backfill(count: 500) do
        pages += 1
        next unless pages == 2

        failing.restart
        store.get("anything") # the restart is noticed on the next connection
      end

      expect(report.ok?).to be(true)
      expect(failing.client.dbsize).to be < 3000
      expect(store.migration_status).to include(backfill_needed: true, safe_to_switch: false)
      expect(store.backfill.ok?).to be(true)
      expect(store.migration_status[:backfill_needed]).to be(false)
    end

    it "is not safe while the other store's breaker is open, since a restart behind it goes unseen" do
      flags.enable(primary_default) # switched: the secondary is the other store
      old = dedicated_redis_server
      store = multi_store(primary_server.url, { url: old.url, read_timeout: 0.2 }, breaker_threshold: 1, breaker_cool_down: 60)
      store.set("k", "v")
      expect(store.verify).to be_in_agreement
      expect(store.migration_status[:safe_to_switch]).to be(true)

      Process.kill(:STOP, old.pid)
      store.migration_status # asks the old store for its run_id: times out, the breaker opens
      old.restart # empty, unseen behind the open breaker
      status = store.migration_status

      expect(old.client.get("k")).to be_nil
      expect(status[:breaker][:secondary]).to eq(:open)
      expect(status).to include(safe_to_switch: false, reasons: include("the secondary's circuit breaker is open"))
    end

    it "is not safe after the new store restarted empty and a backfill ran; a verify with repair makes it safe" do
      failing = dedicated_redis_server
      store = multi_store(failing.url)
      10.times { |i| store.set("c#{i}", "5") }
      10.times { |i| store.set("s#{i}", "session") }
      expect(store.verify.in_agreement?).to be(true)
      expect(store.migration_status[:safe_to_switch]).to be(true)

      failing.restart
      store.get("anything") # the restart is noticed on the next connection
      10.times { |i| store.incr("c#{i}") } # answered differently by the stores: re-synced
      report = store.backfill

      expect(report.ok?).to be(true)
      status = store.migration_status
      expect(status[:safe_to_switch]).to be(false)
      expect(status[:full_verify_needed]).to be(true)

      expect(store.verify(repair: true).in_agreement?).to be(true)
      expect(store.migration_status[:safe_to_switch]).to be(true)
      expect(failing.client.mget("c0", "s0")).to eq(%w[6 session])
    end

    it "is not safe after a journal overflow and a backfill that copied nothing" do
      store = multi_store(journal_capacity: 1)
      expect(store.verify.in_agreement?).to be(true)
      10.times { |i| secondary.set("c#{i}", "5") }
      store.pipelined { |p| 10.times { |i| p.incr("c#{i}") } } # results differ; the journal holds 1 key
      sleep 0.5 # re-sync settles the one key it could record

      expect(store.backfill.copied).to eq(0)
      expect(store.migration_status[:safe_to_switch]).to be(false)
      expect((0..9).count { |i| primary.get("c#{i}") != secondary.get("c#{i}") }).to be >= 9

      expect(store.verify(repair: true).in_agreement?).to be(true)
      expect(store.migration_status[:safe_to_switch]).to be(true)
      expect((0..9).map { |i| primary.get("c#{i}") }.uniq).to eq(["6"])
    end

    it "is not safe while dual-write is off, nor after writes made while it was off" do
      store = multi_store
      expect(store.verify.in_agreement?).to be(true)
      flags.disable(dual_write)
      10.times { |i| store.set("k#{i}", i) } # the secondary only

      expect(store.migration_status[:reasons]).to include(a_string_matching(/dual-write is off/))
      flags.enable(dual_write)
      expect(store.migration_status[:safe_to_switch]).to be(false)
      expect(store.verify(repair: true).in_agreement?).to be(true)
      expect(store.migration_status[:safe_to_switch]).to be(true)
    end

    it "does not let a verify run while dual-write is off vouch for the stores" do
      flags.disable(dual_write)
      store = multi_store

      expect(store.verify.in_agreement?).to be(true) # both empty, but writes reach one store only
      flags.enable(dual_write)
      expect(store.migration_status[:reasons]).to include(a_string_matching(/cannot vouch/))
    end

    it "is not safe after a restart that came after the last verify" do
      failing = dedicated_redis_server
      store = multi_store(failing.url)
      store.set("k", "v")
      expect(store.verify.in_agreement?).to be(true)

      failing.restart
      store.get("k")

      expect(store.migration_status[:safe_to_switch]).to be(false)
    end
  end

  describe "a backfill racing with writes that change a key in place" do
    # A TCP proxy to the new store that holds back, for `delay` seconds, what the client sends
    # when it contains `marker`, calling `on_hit` the first time.
    def start_proxy(port, marker:, delay:, on_hit:)
      listener = TCPServer.new("127.0.0.1", 0)
      hit = false
      @proxy = Thread.new do
        loop do
          client = listener.accept
          upstream = TCPSocket.new("127.0.0.1", port)
          Thread.new do
            loop do
              data = client.readpartial(1 << 20)
              if data.include?(marker)
                on_hit.call unless hit
                hit = true
                sleep delay
              end
              upstream.write(data)
            end
          rescue IOError, SystemCallError
            upstream.close
          end
          Thread.new do
            loop { client.write(upstream.readpartial(1 << 20)) }
          rescue IOError, SystemCallError
            client.close
          end
        end
      end
      listener.addr[1]
    end

    after { @proxy&.kill }

    # Writes dual-written by another process (a plain client per store here): this backfill's
    # own MultiStore never sees them, so only the backfill's second look can notice.
    it "copies again keys that EXPIRE, HDEL and PERSIST changed between the DUMP and the RESTORE" do
      flags.enable(dual_write)
      secondary.set("session:a", "data")
      secondary.hset("h", "f1", "1", "f2", "2")
      secondary.set("session:b", "data", ex: 100)
      writer = nil
      writes = lambda do
        writer = Thread.new do
          [primary_server.client, secondary_server.client].each do |client|
            client.expire("session:a", 3600)
            client.hdel("h", "f1")
            client.persist("session:b")
          end
        end
      end
      proxied = start_proxy(primary_server.port, marker: "RESTORE", delay: 0.3, on_hit: writes)
      store = multi_store("redis://127.0.0.1:#{proxied}/0")

      report = store.backfill
      writer.join

      expect([report.recopied, report.left_different]).to eq([3, 0])
      expect(primary.ttl("session:a")).to be_within(5).of(3600)
      expect(primary.hgetall("h")).to eq({ "f2" => "2" })
      expect(primary.ttl("session:b")).to eq(-1)
      expect(store.verify.in_agreement?).to be(true)
    end

    it "ends with the same writes made through its own MultiStore on both stores" do
      flags.enable(dual_write)
      secondary.set("session:a", "data")
      secondary.hset("h", "f1", "1", "f2", "2")
      store = nil
      writer = nil
      writes = lambda do
        writer = Thread.new do
          store.expire("session:a", 3600)
          store.hdel("h", "f1")
        end
      end
      store = multi_store("redis://127.0.0.1:#{start_proxy(primary_server.port, marker: 'RESTORE', delay: 0.3,
                                                                                on_hit: writes)}/0")

      report = store.backfill
      writer.join
      wait_until { store.migration_status[:journal_keys].zero? }

      expect(report.left_different).to eq(0)
      expect(primary.ttl("session:a")).to be_within(5).of(3600)
      expect(primary.hgetall("h")).to eq({ "f2" => "2" })
      expect(store.verify.in_agreement?).to be(true)
    end
  end

  describe "MultiStores of one partition in one process (a pool of them)" do
    it "share what one of them knows: a journal overflow makes every one read the default store and say not safe" do
      flags.enable(dual_write)
      failing = dedicated_redis_server
      options = [{ url: failing.url, timeout: 0.3 }, secondary_server.url]
      writer = multi_store(*options, journal_capacity: 2, breaker_cool_down: 0.5)
      reader = multi_store(*options, journal_capacity: 2, breaker_cool_down: 0.5)
      20.times { |i| writer.set("k#{i}", "old") }
      expect(reader.verify.in_agreement?).to be(true)
      Process.kill(:STOP, failing.pid)
      begin
        20.times { |i| writer.set("k#{i}", "new") }
      ensure
        Process.kill(:CONT, failing.pid)
      end
      sleep 1.5

      expect((0...20).map { |i| reader.get("k#{i}") }.uniq).to eq(["new"])
      expect(reader.migration_status[:safe_to_switch]).to be(false)
      expect(reader.migration_status[:full_verify_needed]).to be(true)
    end
  end

  describe "reads while the journal could not record every missed write" do
    it "never returns a stale value once the new store is back: reads go to the default store until verified" do
      flags.enable(dual_write)
      failing = dedicated_redis_server
      store = multi_store({ url: failing.url, timeout: 0.3 }, secondary_server.url,
                          journal_capacity: 2, breaker_cool_down: 0.5)
      10.times { |i| store.set("user:#{i}:email", "old@example.com") }
      Process.kill(:STOP, failing.pid)
      begin
        10.times { |i| store.set("user:#{i}:email", "new@example.com") } # 8 of 10 cannot be journaled
      ensure
        Process.kill(:CONT, failing.pid)
      end
      sleep 1.5 # back, breaker closed, re-sync ran

      expect((0...10).map { |i| store.get("user:#{i}:email") }.uniq).to eq(["new@example.com"])
      expect(store.mget((0...10).map { |i| "user:#{i}:email" }).uniq).to eq(["new@example.com"])
      expect(store.migration_status[:full_verify_needed]).to be(true)

      expect(store.verify(repair: true).in_agreement?).to be(true)
      expect((0...10).map { |i| failing.client.get("user:#{i}:email") }.uniq).to eq(["new@example.com"])
      expect(store.migration_status[:full_verify_needed]).to be(false)
    end
  end


  # Found by the fuzzer (seed 251140549): a copy to the primary made before dual-write began
  # went stale there as writes kept reaching the old store only, and once dual-write came on,
  # primary-first reads answered from the stale copy (TTL -1 instead of the TTL set meanwhile).
  describe "copies made before dual-write began" do
    { "backfill" => ->(store) { store.backfill }, "verify with repair" => ->(store) { store.verify(repair: true) } }
      .each do |copy, run|
      it "are not read from the primary after a #{copy} while dual-write was off: the old store answers until verified" do
        store = multi_store
        store.set("session", "v1")
        store.hset("profile", "name", "old")
        run.call(store)
        expect(primary.get("session")).to eq("v1") # copied, and about to go stale
        store.set("session", "v2")
        store.pexpireat("session", 4_000_000_000_000)
        store.hset("profile", "name", "new")
        flags.enable(dual_write)

        aggregate_failures do
          expect(store.get("session")).to eq("v2")
          expect(store.ttl("session")).to be > 1_000_000
          expect(store.hget("profile", "name")).to eq("new")
          expect(store.migration_status[:full_verify_needed]).to be(true)
          expect(store.migration_status[:safe_to_switch]).to be(false)
        end

        expect(store.verify(repair: true)).to be_in_agreement
        aggregate_failures do
          expect(primary.get("session")).to eq("v2")
          expect(primary.pexpiretime("session")).to eq(4_000_000_000_000)
          expect(primary.hgetall("profile")).to eq(secondary.hgetall("profile"))
          expect(store.migration_status[:full_verify_needed]).to be(false)
        end
      end
    end

    it "leave a first dual-write without a copy before it as it was: no full verify asked for" do
      store = multi_store
      store.set("session", "v1")
      flags.enable(dual_write)
      store.set("session", "v2")

      expect(store.migration_status[:full_verify_needed]).to be(false)
      expect([primary.get("session"), secondary.get("session")]).to eq(%w[v2 v2])
    end
  end
  # A dual-writing store whose primary holds "counter" differently, journaled: the primary
  # refuses RESTORE, so the re-sync cannot bring it in line meanwhile. Yields the store.
  def with_a_journaled_difference
    flags.enable(dual_write)
    primary.call(:acl, :setuser, "norestore", "on", ">pw", "~*", "&*", "+@all", "-restore")
    store = multi_store("redis://norestore:pw@127.0.0.1:#{primary_server.port}/0", secondary_server.url)
    primary.set("counter", "5") # a counter the new store did not start from zero
    secondary.set("counter", "1")
    expect(store.incr("counter")).to eq(2) # answered 6 by the primary: journaled
    expect(store.migration_status[:journal_keys]).to eq(1)
    yield store
  ensure
    primary.call(:acl, :deluser, "norestore")
  end

  # Found by the fuzzer (seed 427860330): a key the stores held differently (journaled, the
  # re-sync not through yet) was MOVEd by both alike. The re-sync then found it gone from both
  # in database 0 and settled it; database 1 kept the difference, and nothing asked for a verify.
  describe "a write that carries a differing key into another database" do
    {
      "MOVE" => ->(store) { store.move("counter", 1) },
      "COPY … DB" => ->(store) { store.copy("counter", "counter", db: 1) },
      "SWAPDB" => ->(store) { store.swapdb(0, 1) }
    }.each do |name, write|
      it "asks for a full verify (#{name}), since the journal names keys of one database only" do
        with_a_journaled_difference do |store|
          write.call(store)
          wait_until(2) { store.migration_status[:journal_keys].zero? }

          db1 = [primary_server, secondary_server].map { |server| Redis.new(url: server.url(1)).get("counter") }
          expect(db1).to eq(%w[6 2]) # where the difference went
          status = store.migration_status
          expect(status[:full_verify_needed]).to be(true)
          expect(status[:safe_to_switch]).to be(false)
        end
      end
    end
  end

  describe "a write that derives a key from one the stores hold differently" do
    {
      "RENAME" => ->(store) { store.rename("counter", "copy") },
      "COPY" => ->(store) { store.copy("counter", "copy") },
      "a script" => ->(store) { store.eval("return redis.call('SET', KEYS[2], redis.call('GET', KEYS[1]))", keys: %w[counter copy]) }
    }.each do |name, write|
      it "journals the derived key too (#{name}): it is read from the default store, and not safe until re-synced" do
        with_a_journaled_difference do |store|
          write.call(store)

          expect([primary.get("copy"), secondary.get("copy")]).to eq(%w[6 2]) # the difference went along
          expect(store.get("copy")).to eq("2") # not the primary's stale copy
          status = store.migration_status
          expect(status[:journal_keys]).to be >= 1
          expect(status[:safe_to_switch]).to be(false)
        end
      end
    end
  end

  describe "a difference carried where no key names it" do
    it "journals a SORT's destination when its GET pattern read a journaled key" do
      with_a_journaled_difference do |store|
        [primary, secondary].each { |c| c.rpush("ids", "counter") }

        store.sort("ids", get: "*", order: "alpha", store: "copy") # GET * reads the key each element names

        expect([primary.lrange("copy", 0, -1), secondary.lrange("copy", 0, -1)]).to eq([%w[6], %w[2]])
        expect(store.lrange("copy", 0, -1)).to eq(%w[2])
        expect(store.migration_status[:safe_to_switch]).to be(false)
      end
    end

    it "re-syncs every key of a batch in which a script may have written differently" do
      flags.enable(dual_write)
      store = multi_store
      store.sadd("pool", (1..1000).map(&:to_s))

      # The SPOP takes a member at random on each store; the SUNIONSTORE copies what is left.
      store.pipelined do |batch|
        batch.eval("redis.call('SPOP', KEYS[1])", keys: ["pool"])
        batch.sunionstore("left", "pool")
      end
      wait_until { store.migration_status[:journal_keys].zero? }

      expect(primary.smembers("left").sort).to eq(secondary.smembers("left").sort)
      expect(primary.smembers("pool").sort).to eq(secondary.smembers("pool").sort)
    end
  end

  describe "a transaction replayed on the other store" do
    {
      "SPOP in a block-less MULTI" => ->(store) { 5.times { store.multi; store.spop("pool"); store.exec } },
      "SPOP in a WATCH transaction" => ->(store) { 5.times { store.watch("w") { store.multi { |t| t.spop("pool") } } } },
      # Enough entries that the two servers' clocks turn a millisecond at different entries.
      "XADD * in a WATCH transaction" => ->(store) { store.watch("w") { store.multi { |t| 2000.times { |i| t.xadd("pool", { "n" => i }) } } } },
      "a script calling XADD *" => lambda { |store|
        store.eval("for i = 1, 2000 do redis.call('XADD', KEYS[1], '*', 'n', i) end return 1", keys: ["pool"])
      }
    }.each do |name, write|
      it "re-syncs what each store picked for itself (#{name}): no silent difference" do
        flags.enable(dual_write)
        store = multi_store
        name.include?("XADD") ? store.xadd("pool", { "n" => "0" }, id: "1-1") : store.sadd("pool", (1..1000).map(&:to_s))
        expect(store.verify).to be_in_agreement

        write.call(store)
        wait_until { store.migration_status[:journal_keys].zero? }

        expect(contents(primary, "pool")).to eq(contents(secondary, "pool"))
        expect(store.verify).to be_in_agreement
      end
    end
  end

  describe "a rollback of the default onto a store that missed writes" do
    # The secondary misses the writes behind its breaker (kept open), then becomes the default
    # again: its copies of their keys are stale, journaled; the primary has every write.
    def rolled_back_store(roll_back: true, breaker_cool_down: 60)
      flags.enable(dual_write, primary_default)
      lagging = dedicated_redis_server
      store = multi_store(primary_server.url, { url: lagging.url, timeout: 0.3 }, breaker_cool_down: breaker_cool_down)
      store.set("counter", "1")
      store.rpush("jobs", %w[a b])
      store.rpush("queue", "x")
      Process.kill(:STOP, lagging.pid)
      begin
        # Three looks at its run_id time out and open the breaker, with nothing journaled
        # (no re-sync round under way that would close it once the store answers); the writes
        # below are then not sent to it at all.
        3.times { store.migration_status }
        3.times { store.incr("counter") }
        store.lpop("jobs")
        store.lpop("queue")
      ensure
        Process.kill(:CONT, lagging.pid)
      end
      flags.disable(primary_default) if roll_back
      [store, lagging.client]
    end

    {
      "WATCH … MULTI" => ->(store) { store.watch("counter") { store.multi { |t| t.rename("counter", "copy") } } },
      "MULTI without a block" => ->(store) { store.multi; store.rename("counter", "copy"); store.exec },
      "a command between WATCH and MULTI" => ->(store) { store.watch("counter") { store.rename("counter", "copy"); store.unwatch } }
    }.each do |name, transaction|
      it "copies the newer value to it before a transaction runs there (#{name}): nothing lost" do
        store, old_store = rolled_back_store
        expect(old_store.get("counter")).to eq("1")

        transaction.call(store)
        wait_until { store.migration_status[:journal_keys].zero? }

        expect([primary.get("copy"), old_store.get("copy")]).to eq(%w[4 4])
        expect(store.get("copy")).to eq("4")
      end
    end

    # Found by review: a thread's catch-up (or the re-sync) copying the key while another
    # thread's transaction ran on it overwrote the transaction's result, or settled the key
    # before the transaction reached the other store (silent difference, increments lost).
    it "keeps every increment of transactions from 8 threads, each copy waiting for the one under way" do
      store, old_store = rolled_back_store

      8.times.map { Thread.new { 5.times { store.multi; store.incr("counter"); store.exec } } }.each(&:join)
      4.times.map { Thread.new { 5.times { store.watch("other") { store.incr("counter") } } } }.each(&:join)
      wait_until { primary.get("counter") == old_store.get("counter") } # these are re-synced, not replayed

      expect([primary.get("counter"), old_store.get("counter")]).to eq(%w[64 64])
    end

    it "never pops an element again that the store missed the pop of, from 8 threads" do
      flags.enable(dual_write, primary_default)
      lagging = dedicated_redis_server
      store = multi_store(primary_server.url, { url: lagging.url, timeout: 0.3 }, breaker_cool_down: 60)
      store.rpush("jobs", (1..100).map { |i| "job#{i}" })
      Process.kill(:STOP, lagging.pid)
      begin
        3.times { store.migration_status }
        50.times { store.lpop("jobs") } # job1..job50 taken while the old store was away
      ensure
        Process.kill(:CONT, lagging.pid)
      end
      flags.disable(primary_default)

      popped = Queue.new
      8.times.map { Thread.new { 5.times { popped << store.blpop("jobs", timeout: 1)&.last } } }.each(&:join)

      taken = Array.new(popped.size) { popped.pop }
      expect(taken.compact.size).to eq(40)
      expect(taken.compact.map { |job| job.delete_prefix("job").to_i }).to all(be > 50)
    end

    # Found by review: a pop blocked on the queue (timeout 0) held the key for as long as it
    # waited, so no copy reached it -- another consumer popped the consumed "x" again, and the
    # re-sync never settled the key.
    it "lets a copy reach a key a consumer is blocked on" do
      store, old_store = rolled_back_store(roll_back: false)
      consumer = Thread.new { store.blpop("queue", timeout: 0) }
      sleep 0.3 # blocked on the (empty) primary
      flags.disable(primary_default)

      expect(store.lpop("queue")).to be_nil # "x" was consumed while the old store was away
      expect(old_store.lrange("queue", 0, -1)).to eq([])
    ensure
      consumer&.kill&.join
    end

    # Found by review: a forked child inherited the parent's registration of a key a thread had
    # a transaction under way on; that thread does not exist in the child, so the key stayed
    # journaled there for good and `safe_to_switch` never came.
    it "does not keep a forked child waiting for a transaction the parent had under way" do
      store, = rolled_back_store(roll_back: false, breaker_cool_down: 1)
      transaction = Thread.new do
        store.watch("counter") { store.multi { |t| Process.kill(:STOP, primary_server.pid); t.incr("counter") } }
      end
      sleep 0.1 # mid-EXEC, the primary stalled
      reader, writer = IO.pipe
      child = fork do
        reader.close
        sleep 0.4
        store.set("z", "1")
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
        sleep 0.05 until store.migration_status[:journal_keys].zero? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        writer.puts(store.migration_status[:journal_keys])
        exit!(0)
      end
      writer.close
      sleep 0.1
      Process.kill(:CONT, primary_server.pid)
      transaction.join

      expect(reader.read.to_i).to eq(0)
    ensure
      Process.kill(:CONT, primary_server.pid)
      Process.wait(child) if child
    end

    # Found by review: the re-sync thread started only when a process journaled something; a
    # forked child whose writes journaled nothing kept the journal it inherited for good.
    it "re-syncs in a forked child the keys journaled before the fork" do
      store, = rolled_back_store(breaker_cool_down: 1)
      expect(store.migration_status[:journal_keys]).to eq(3)
      reader, writer = IO.pipe
      child = fork do
        reader.close
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
        until store.migration_status[:journal_keys].zero? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          store.set("elsewhere", "x")
          sleep 0.05
        end
        writer.puts(store.migration_status[:journal_keys])
        exit!(0)
      end
      writer.close

      expect(reader.read.to_i).to eq(0)
    ensure
      Process.wait(child) if child
    end

    it "copies the newer list to it before a blocking pop takes from it" do
      store, old_store = rolled_back_store
      expect(old_store.lrange("jobs", 0, -1)).to eq(%w[a b])

      expect(store.blmove("jobs", "done", "LEFT", "LEFT", timeout: 1)).to eq("b")
      wait_until { store.migration_status[:journal_keys].zero? }

      expect([primary.lrange("done", 0, -1), old_store.lrange("done", 0, -1)]).to eq([%w[b], %w[b]])
      expect([primary.exists?("jobs"), old_store.exists?("jobs")]).to eq([false, false])
    end
  end

  describe "what verify compares" do
    it "compares a HyperLogLog by its registers: PFCOUNT on one store is no difference" do
      flags.enable(dual_write)
      store = multi_store
      store.pfadd("hll", %w[a b c d e])

      expect(store.pfcount("hll")).to eq(5) # rewrites the cached count of the copy it read
      expect(primary.get("hll")).not_to eq(secondary.get("hll"))

      expect(store.verify.in_agreement?).to be(true)

      secondary.pfadd("hll", "f") # a real difference
      expect(store.verify.different).to eq(1)
    end

    it "compares a HyperLogLog stored sparse on one server and dense on the other by its registers" do
      dense = dedicated_redis_server("--hll-sparse-max-bytes", "0")
      members = (1..50).map { |i| "m#{i}" }
      dense.client.pfadd("hll", members)
      secondary.pfadd("hll", members)
      store = multi_store(dense.url, secondary_server.url)

      expect(dense.client.get("hll").bytes[4]).to eq(0) # dense
      expect(secondary.get("hll").bytes[4]).to eq(1) # sparse
      expect(store.verify.in_agreement?).to be(true)
    end

    it "finds streams whose pending entries belong to other consumers, were delivered more often, or whose last ID differs" do
      setups = {
        "consumer" => [->(c) { c.xreadgroup("g", "c1", "s", ">") }, ->(c) { c.xreadgroup("g", "c2", "s", ">") }],
        "deliveries" => [->(c) { c.xreadgroup("g", "c1", "s", ">"); c.xreadgroup("g", "c1", "s", "0") },
                         ->(c) { c.xreadgroup("g", "c1", "s", ">") }],
        "last id" => [->(c) { c.xadd("s", { "f" => "v" }, id: "5-0"); c.xdel("s", "5-0") }, ->(_c) {}]
      }
      setups.each do |what, (on_primary, on_secondary)|
        [primary, secondary].each do |c|
          c.del("s")
          c.xadd("s", { "f" => "v" }, id: "1-0")
          c.xgroup(:create, "s", "g", "0")
        end
        on_primary.call(primary)
        on_secondary.call(secondary)

        expect(multi_store.verify.different).to eq(1), "#{what} differs"
      end
    end

    it "finds a stream whose consumer group differs, and repairs it" do
      [primary, secondary].each do |c|
        c.xadd("s", { "f" => "v" }, id: "1-0")
        c.xgroup(:create, "s", "g", "0")
      end
      secondary.xreadgroup("g", "c1", "s", ">") # delivered on the old store only
      store = multi_store

      expect(store.verify.different).to eq(1)
      expect(store.verify(repair: true).in_agreement?).to be(true)
      expect(primary.xpending("s", "g")["size"]).to eq(1)
    end

    it "matches a many-star glob at once when sampling (Redis's own matcher is polynomial too)" do
      secondary.set("a" * 60, "v")
      store = multi_store
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)

      report = store.verify(sample: 1, match: "#{'*a' * 12}b")

      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 2
      expect(report.checked).to eq(0)
      expect(store.verify(sample: 5, match: "a*a").checked).to eq(5)
    end
  end

  it "repairs a default store that restarted empty from the other store, which has every write" do
    flags.enable(dual_write)
    failing = dedicated_redis_server
    store = multi_store(primary_server.url, failing.url)
    50.times { |i| store.set("k#{i}", i) }
    failing.restart
    store.get("k0") # read from the primary (first): the restart is noticed on the next write
    store.set("after", "restart")

    status = store.migration_status
    expect(status[:repair_from]).to eq(:primary)
    expect(status[:reasons]).to include(a_string_matching(/copies from the primary/))
    expect(store.get("k7")).to eq("7") # read from the store that has it
    expect(store.verify(repair: true).in_agreement?).to be(true)
    expect(primary.dbsize).to eq(51)
    expect(failing.client.get("k7")).to eq("7")
  end

  it "answers reads with the default primary's error replies, never with a restarted secondary's nil" do
    flags.enable(dual_write, primary_default)
    failing = dedicated_redis_server
    store = multi_store(primary_server.url, failing.url)
    store.rpush("list", "a")
    store.set("string", "s")
    failing.restart # not noticed: nothing was written since

    expect { store.get("list") }.to raise_error(Redis::CommandError, /WRONGTYPE/)
    expect { store.pipelined { |p| [p.get("list"), p.get("string"), p.get("missing")] } }
      .to raise_error(Redis::CommandError, /WRONGTYPE/)
    expect(store.mget("string", "missing")).to eq(["s", nil])
    expect(primary.lrange("list", 0, -1)).to eq(["a"])
    expect(failing.client.dbsize).to eq(0)
  end

  describe "repair copies from the default store" do
    before do
      primary.set("differs", "new")
      secondary.set("differs", "old")
      primary.set("only_primary", "p")
      secondary.set("only_secondary", "s")
    end

    it "copies the secondary's data while the secondary is the default" do
      flags.enable(dual_write)
      expect(multi_store.verify(repair: true).in_agreement?).to be(true)

      expect(primary.mget("differs", "only_primary", "only_secondary")).to eq(["old", nil, "s"])
      expect(secondary.mget("differs", "only_primary", "only_secondary")).to eq(["old", nil, "s"])
    end

    it "copies the primary's data once the primary is the default, never reverting newer data" do
      flags.enable(dual_write, primary_default)
      expect(multi_store.verify(repair: true).in_agreement?).to be(true)

      expect(primary.mget("differs", "only_primary", "only_secondary")).to eq(["new", "p", nil])
      expect(secondary.mget("differs", "only_primary", "only_secondary")).to eq(["new", "p", nil])
    end
  end

  # A copy is not atomic with the dual writes landing on both stores: a write that reaches the
  # target before the copy's RESTORE and the source after its DUMP is undone on the target.
  describe "a repair racing with writes of the keys it copies" do
    # Threads write the same few keys through the MultiStore without pause while verify repairs
    # them over and over; every write must be on both stores, once.
    def repair_under_writes(store, rounds:)
      stop = false
      writers = Array.new(4) do |t|
        Thread.new do
          n = 0
          until stop
            store.incr("count:#{t}")
            store.sadd?("seen:#{t}", n.to_s)
            n += 1
          end
          n
        end
      end
      sleep 0.1
      reports = Array.new(rounds) { store.verify(repair: true) }
      stop = true
      counts = writers.map(&:value)
      wait_until(10) { store.migration_status[:journal_keys].zero? }
      [counts, reports]
    end

    [[:secondary, []], [:primary, [:primary_default]]].each do |default, extra|
      it "loses no write made through its own MultiStore while the #{default} is the default" do
        flags.enable(dual_write, *extra.map { |flag| send(flag) })
        store = multi_store
        # Keys the other store holds stale, so every verify has something to repair meanwhile.
        source, target = default == :primary ? [primary, secondary] : [secondary, primary]
        20.times { |i| source.set("stale:#{i}", "new") && target.set("stale:#{i}", "old") }

        counts, reports = repair_under_writes(store, rounds: 15)

        aggregate_failures do
          counts.each_with_index do |n, t|
            expect([t, primary.get("count:#{t}").to_i, secondary.get("count:#{t}").to_i]).to eq([t, n, n])
            expect([t, primary.scard("seen:#{t}"), secondary.scard("seen:#{t}")]).to eq([t, n, n])
          end
          expect(reports.first.repaired).to be >= 20
          expect(target.mget(*Array.new(20) { |i| "stale:#{i}" })).to all(eq("new"))
          expect(store.migration_status[:journal_keys]).to eq(0)
        end
      end
    end

    it "waits for a write already on its way when the repair began, instead of undoing it and saying the stores agree" do
      flags.enable(dual_write)
      store = multi_store
      store.sadd?("k", "a")
      expect(store.verify).to be_in_agreement
      # The old store (the default) takes its time to apply the next write; the new one has it.
      secondary.call(:client, :pause, 1500, :write)
      writer = Thread.new { store.sadd?("k", "m") }
      sleep 0.3

      report = store.verify(repair: true)

      expect(writer.value).to be(true)
      wait_until { store.migration_status[:journal_keys].zero? }
      aggregate_failures do
        expect(report).not_to be_in_agreement
        expect([primary.smembers("k").sort, secondary.smembers("k").sort]).to eq([%w[a m], %w[a m]])
        expect(store.migration_status[:safe_to_switch]).to be(false)
      end
    end

    it "is not held back by a pipelined blocking pop in flight on another key" do
      flags.enable(dual_write)
      store = multi_store(primary_server.url, secondary_server.url)
      lagging = dedicated_redis_server
      fast = multi_store({ url: lagging.url, read_timeout: 0.3 }, { url: secondary_server.url, read_timeout: 0.3 })
      slow = multi_store({ url: lagging.url, read_timeout: 15 }, { url: secondary_server.url, read_timeout: 15 })
      fast.set("warm", "1")
      blocker = Thread.new { slow.pipelined { |p| p.set("other", "1") && p.blpop("queue", timeout: 10) } }
      sleep 0.3
      Process.kill(:STOP, lagging.pid)
      begin
        5.times { |i| fast.set("k#{i}", "v#{i}") } # the new store misses them: journaled
      ensure
        Process.kill(:CONT, lagging.pid)
      end

      wait_until(3) { fast.migration_status[:journal_keys].zero? }

      aggregate_failures do
        expect(blocker).to be_alive
        expect(fast.migration_status[:journal_keys]).to eq(0)
        expect(lagging.client.mget(*Array.new(5) { |i| "k#{i}" })).to eq(Array.new(5) { |i| "v#{i}" })
      end
    ensure
      secondary.rpush("queue", "x") # ends the blocking pop
      blocker&.join(5)
      store&.close
    end

    it "repairs from the store the flags name at each page: a switch to the new store alone mid-verify loses no write" do
      flags.enable(dual_write)
      store = multi_store
      [primary, secondary].each { |c| c.mset(*Array.new(2_000) { |i| ["c#{i}", "0"] }.flatten) }
      secondary.set("c0", "differs") # so the verify has a reason to repair
      counts = Hash.new(0)
      stop = false
      writer = Thread.new do
        i = 0
        until stop
          key = "c#{1 + (i * 7) % 1_999}"
          store.incr(key)
          counts[key] += 1
          i += 1
        end
      end
      pages = 0

      store.verify(repair: true, count: 20) do
        pages += 1
        flags.set(primary_default) if pages == 3 # the new store alone from here
      end
      stop = true
      writer.join

      lost = counts.sum { |key, n| [n - primary.get(key).to_i, 0].max }
      expect([counts.values.sum.positive?, lost]).to eq([true, 0])
    end

    it "leaves a key whose latest write the source missed to the re-sync, instead of copying the older value over it" do
      flags.enable(dual_write, primary_default)
      lagging = dedicated_redis_server
      store = multi_store(primary_server.url, { url: lagging.url, timeout: 0.2 },
                          breaker_threshold: 1, breaker_cool_down: 3)
      store.set("k", "v1")
      Process.kill(:STOP, lagging.pid)
      begin
        store.set("k", "v2") # times out on the secondary (and lands there once it resumes): its breaker opens
      ensure
        Process.kill(:CONT, lagging.pid)
      end
      store.set("k", "v3") # skipped by the open breaker: the secondary misses it, journaled
      flags.disable(primary_default) # rolled back: the secondary, which missed v2, is the default

      report = store.verify(repair: true)

      aggregate_failures do
        expect([report.different, report.repaired, report.repair_failed]).to eq([1, 0, 1])
        expect([primary.get("k"), lagging.client.get("k")]).to eq(%w[v3 v2])
        expect(store.get("k")).to eq("v3")
      end
      # Once the breaker's cool-down is over, the re-sync brings the secondary in line.
      wait_until(6) { store.migration_status[:journal_keys].zero? }
      expect([primary.get("k"), lagging.client.get("k")]).to eq(%w[v3 v3])
    end
  end

  it "does not open the lagging store's breaker when the source fails to answer the re-sync" do
    flags.enable(dual_write, primary_default)
    lagging = dedicated_redis_server
    source = dedicated_redis_server
    store = multi_store({ url: source.url, timeout: 0.2 }, { url: lagging.url, timeout: 0.2 },
                        breaker_cool_down: 5)
    Process.kill(:STOP, lagging.pid)
    begin
      store.set("k", "v") # journaled: the secondary (non-default) missed it
    ensure
      Process.kill(:CONT, lagging.pid)
    end
    wait_until { store.migration_status[:journal_keys].zero? }
    store.set("k2", "v")
    Process.kill(:STOP, lagging.pid)
    begin
      store.set("k2", "w") # journaled again
    ensure
      Process.kill(:CONT, lagging.pid)
    end
    breaker_before = store.migration_status[:breaker][:secondary]
    Process.kill(:STOP, source.pid) # now the source hangs while re-sync copies from it
    sleep 1.2
    Process.kill(:CONT, source.pid)

    expect(breaker_before).to eq(:closed)
    expect(store.migration_status[:breaker][:secondary]).to eq(:closed)
  end

  it "lets a process forked while another thread journals a big MSET make its first call" do
    flags.enable(dual_write)
    store = multi_store("redis://127.0.0.1:#{RedisServers.free_port}/0", secondary_server.url, journal_capacity: 1000)
    args = (0...100_000).flat_map { |i| ["k#{i}", "v"] }
    stop = false
    writer = Thread.new { store.mset(*args) until stop }
    sleep 0.5
    outcomes = Array.new(20) do
      pid = fork { store.get("k1") == "v" ? exit!(0) : exit!(2) }
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      status = nil
      sleep 0.01 until (status = Process.wait2(pid, Process::WNOHANG)&.last) ||
                       Process.clock_gettime(Process::CLOCK_MONOTONIC) - started > 5
      next status.exitstatus if status

      Process.kill(:KILL, pid)
      Process.wait(pid)
      :hung
    end
    stop = true
    writer.join

    expect(outcomes.tally).to eq({ 0 => 20 })
  end

  # Found by an adversarial run against real servers (each failed before its fix).
  describe "what a write on one store leaves behind" do
    def store_differences
      keys = (primary.keys("*") + secondary.keys("*")).uniq.sort
      keys.reject { |key| contents(primary, key) == contents(secondary, key) }
    end

    describe "a default store that times out" do
      let(:store) do
        flags.enable(dual_write)
        multi_store(primary_server.url, { url: hanging.url, read_timeout: 0.3 })
      end
      let(:hanging) { dedicated_redis_server }
      let(:old) { hanging.client }

      def while_hung
        Process.kill(:STOP, hanging.pid)
        yield
      rescue Redis::TimeoutError => e
        e
      ensure
        Process.kill(:CONT, hanging.pid)
      end

      def primary = primary_server.client
      def secondary = old

      before do
        store.rpush("q", %w[x y])
        store.set("w", "0")
        expect(store.verify).to be_in_agreement
      end

      # What runs before the store hangs, then what times out.
      {
        "a blocking pop" => [->(_store) {}, ->(store) { store.blpop("q", timeout: 0.2) }],
        "a WATCH … MULTI transaction" => [->(store) { store.watch("w") }, ->(store) { store.multi { |tx| tx.incr("w") } }],
        "a block-less MULTI … EXEC" => [->(store) { store.multi; store.incr("w") }, ->(store) { store.exec }]
      }.each do |what, (before_hang, run)|
        it "re-syncs the other store after #{what} whose reply timed out, instead of saying safe while they differ" do
          before_hang.call(store)
          raised = while_hung { run.call(store) }
          wait_until { store.migration_status[:journal_keys].zero? && store.migration_status[:requests_in_doubt].values.sum.zero? }

          aggregate_failures do
            expect(raised).to be_a(Redis::TimeoutError)
            expect(store_differences).to eq([])
            expect(store.verify).to be_in_agreement
          end
        end
      end
    end

    describe "a default store that refuses a new connection (max clients, a rotated password)" do
      %i[secondary primary].each do |default|
        it "re-syncs the other store, which ran the write, from the #{default} default store" do
          flags.enable(dual_write)
          flags.enable(primary_default) if default == :primary
          refusing = dedicated_redis_server
          store = default == :primary ? multi_store(refusing.url) : multi_store(primary_server.url, refusing.url)
          other = default == :primary ? secondary : primary
          admin = refusing.client
          store.set("c", "5")
          expect(store.verify).to be_in_agreement

          admin.call(:config, :set, :maxclients, "3")
          admin.call(:client, :kill, :type, :normal, :skipme, :yes) # the pooled connections
          holders = Array.new(2) { refusing.client.tap(&:ping) } # the store is full
          raised = begin
            store.pipelined { |p| p.incr("c"); p.incr("c") }
          rescue Redis::BaseError => e
            e
          ensure
            holders.each(&:close)
            admin.call(:config, :set, :maxclients, "10000")
          end
          expect(raised).to be_a(Redis::CommandError).and(have_attributes(message: /max number of clients/))
          wait_until(2) { store.migration_status[:journal_keys].zero? }

          aggregate_failures do
            expect(store.migration_status[:journal_peak]).to be >= 1 # journaled, then re-synced
            expect([admin.get("c"), other.get("c")]).to eq(%w[5 5])
            expect(store.verify).to be_in_agreement
          end
        end
      end
    end

    describe "a script whose writes are random while its answer is not" do
      before { flags.enable(dual_write) }

      it "re-syncs the keys it names, so the stores agree although SPOP took another member on each" do
        store = multi_store
        store.sadd("pool", Array.new(300) { |i| "m#{i}" })
        expect(store.verify).to be_in_agreement
        script = "local m = redis.call('spop', KEYS[1]); redis.call('set', KEYS[2], m); return 1"

        expect(store.eval(script, keys: %w[pool owner])).to eq(1)
        expect(store.evalsha(Digest::SHA1.hexdigest(script), keys: %w[pool owner])).to eq(1)
        wait_until(2) { store.migration_status[:journal_keys].zero? }

        aggregate_failures do
          expect(store_differences).to eq([])
          expect(primary.scard("pool")).to eq(298)
          expect(store.verify).to be_in_agreement
        end
      end

      it "re-syncs what a script writes from the time named in long brackets, or from a set's hash order" do
        store = multi_store
        store.sadd("members", Array.new(300) { |i| "m#{i}" }) # a hash table: each server's own order
        expect(store.verify).to be_in_agreement

        store.eval("return redis.call('set', KEYS[1], redis.call([[TIME]])[2])", keys: %w[clock])
        store.eval("return redis.call('set', KEYS[2], redis.call('SMEMBERS', KEYS[1])[1])", keys: %w[members first])
        wait_until(2) { store.migration_status[:journal_keys].zero? }

        expect(store_differences).to eq([])
        expect(store.verify).to be_in_agreement
      end

      it "leaves a deterministic script's keys alone" do
        store = multi_store
        store.eval("return redis.call('incr', KEYS[1])", keys: %w[counter])

        expect(store.migration_status[:journal_keys]).to eq(0)
        expect([primary.get("counter"), secondary.get("counter")]).to eq(%w[1 1])
      end
    end

    it "never copies onto the store that is the only one written once dual-write is off" do
      store = multi_store(primary_server.url, { url: hanging.url, read_timeout: 0.2 }, breaker_threshold: 1, breaker_cool_down: 1)
      flags.enable(dual_write, primary_default) # step 5
      store.set("k", "v1")
      Process.kill(:STOP, hanging.pid)
      begin
        store.set("k", "v2") # the old store misses it: journaled, breaker open
      ensure
        Process.kill(:CONT, hanging.pid)
      end
      flags.disable(primary_default) # rolled back to step 2 …
      store.set("other", "x")
      flags.disable(dual_write) # … and to step 1: the old store only
      store.set("k", "v3")
      sleep 2 # the breaker's cool-down is over: the re-sync would run now

      expect([store.get("k"), hanging.client.get("k")]).to eq(%w[v3 v3])
    end

    it "looks before the write that probes a half-open breaker, like before any other in-place write" do
      store = multi_store({ url: hanging.url, read_timeout: 0.3 }, secondary_server.url, breaker_threshold: 1, breaker_cool_down: 0.5)
      flags.enable(dual_write)
      secondary.hset("h", "a", "1", "b", "2") # on the old store only, not backfilled yet
      store.ping
      Process.kill(:STOP, hanging.pid)
      begin
        store.get("other") # times out on the primary: the breaker opens
      ensure
        Process.kill(:CONT, hanging.pid)
      end
      sleep 0.7 # half-open

      store.hset("h", "c", "3")

      expect(store.hgetall("h")).to eq("a" => "1", "b" => "2", "c" => "3")
    end

    it "re-syncs what a write computed from a key only one store has, not only that key" do
      store = multi_store
      flags.enable(dual_write)
      secondary.zadd("a", 5, "m") # on the old store only
      [primary, secondary].each { |c| c.zadd("b", 1, "m") }
      secondary.set("s1", "\x01")
      [primary, secondary].each { |c| c.set("s2", "\x02") }
      secondary.set("src", "old-value")

      store.zunionstore("d", %w[a b])
      store.bitop("or", "bd", "s1", "s2")
      store.eval("return redis.call('set', KEYS[2], redis.call('get', KEYS[1]) or 'none')", keys: %w[src copy])
      wait_until { store.migration_status[:journal_keys].zero? }

      aggregate_failures do
        expect(store.zscore("d", "m")).to eq(6.0)
        expect(store.get("bd")).to eq("\x03")
        expect(store.get("copy")).to eq("old-value")
        expect(store_differences).to eq([])
      end
    end

    it "looks before replaying a transaction or a blocking move on the other store" do
      store = multi_store
      flags.enable(dual_write)
      secondary.hset("h", "a", "1", "b", "2") # on the old store only
      secondary.rpush("dst", %w[d1 d2])
      [primary, secondary].each { |c| c.rpush("src", "x") }

      store.watch("h") { store.multi { |tx| tx.hset("h", "c", "3") } }
      store.blmove("src", "dst", "LEFT", "RIGHT", timeout: 1)
      wait_until { store.migration_status[:journal_keys].zero? }

      aggregate_failures do
        expect(store.hgetall("h")).to eq("a" => "1", "b" => "2", "c" => "3")
        expect(store.lrange("dst", 0, -1)).to eq(%w[d1 d2 x])
        expect(store_differences).to eq([])
      end
    end

    # Rolled back from step 5 to step 2 while the old store still misses writes the re-sync has
    # not copied yet: a write to such a key used to be computed on the stale copy (INCR answered
    # 11 where one Redis answers 14) and then re-synced over the newer value.
    it "brings a key the new default missed up to date before a write changes it" do
      store = multi_store(primary_server.url, { url: hanging.url, read_timeout: 0.2 }, breaker_threshold: 1, breaker_cool_down: 5)
      flags.enable(dual_write, primary_default) # step 5
      store.set("counter", "10")
      Process.kill(:STOP, hanging.pid)
      begin
        3.times { store.incr("counter") } # the old store misses them: journaled, its breaker open
      ensure
        Process.kill(:CONT, hanging.pid)
      end
      flags.disable(primary_default) # rollback to step 2: the old store answers again

      expect(store.incr("counter")).to eq(14)
      wait_until { store.migration_status[:journal_keys].zero? }
      expect([primary.get("counter"), hanging.client.get("counter")]).to eq(%w[14 14])
    end

    let(:hanging) { dedicated_redis_server }
  end
end
