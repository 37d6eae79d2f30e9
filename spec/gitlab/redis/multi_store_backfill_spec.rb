# frozen_string_literal: true

require "securerandom"
require "set"
require "tmpdir"
require "json"

# Backfill and verify: copying the keys dual-writes never touch from the old store (secondary) to
# the new one (primary), and proving the two agree before the default is switched.
RSpec.describe Gitlab::Redis::MultiStore, "backfill and verify" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:store) do
    described_class.new(primary_server.url, secondary_server.url, "backfill", feature_flags: flags,
                                                                              on_error: ->(_e, _c) {})
  end
  let(:primary) { primary_server.client }
  let(:secondary) { secondary_server.client }

  after do
    store.close
    primary.close
    secondary.close
  end

  # Writes `count` string keys "<prefix>:<i>" => "value-<i>" in pipelined batches.
  def populate(redis, count, prefix:, **options)
    (0...count).each_slice(1000) do |batch|
      redis.pipelined { |p| batch.each { |i| p.set("#{prefix}:#{i}", "value-#{i}", **options) } }
    end
  end

  # The same PTTL read from both stores, each in one round trip.
  def pttls(redis, keys)
    redis.pipelined { |p| keys.each { |key| p.pttl(key) } }
  end

  def rss_mb
    File.read("/proc/self/status")[/^VmRSS:\s+(\d+)\s+kB/, 1].to_i / 1024.0
  end

  describe "#backfill" do
    it "copies a key of every data type with its exact contents" do
      secondary.set("type:string", "plain")
      secondary.rpush("type:list", %w[c a b a])
      secondary.sadd("type:set", %w[x y z])
      secondary.zadd("type:zset", [[1.5, "one"], [-2, "two"], [1e10, "three"]])
      secondary.hset("type:hash", "name", "ada", "lang", "ruby")
      secondary.xadd("type:stream", { "event" => "push" }, id: "1-1")
      secondary.xadd("type:stream", { "event" => "merge" }, id: "2-1")
      secondary.xgroup(:create, "type:stream", "workers", "0")
      secondary.xreadgroup("workers", "worker-1", "type:stream", ">", count: 1)
      secondary.pfadd("type:hll", (1..500).map { |i| "visitor-#{i}" })
      keys = secondary.keys("type:*")

      report = store.backfill

      expect(report).to have_attributes(scanned: 7, copied: 7, already_present: 0, expired: 0, failed: 0, undone: 0)
      expect(report).to be_done.and be_ok
      keys.each { |key| expect(contents(primary, key)).to eq(contents(secondary, key)), key }
      expect(primary.type("type:stream")).to eq("stream")
      expect(primary.xinfo(:groups, "type:stream")).to eq(secondary.xinfo(:groups, "type:stream"))
      expect(primary.pfcount("type:hll")).to eq(secondary.pfcount("type:hll"))
    end

    it "keeps each TTL to the millisecond and leaves keys without one persistent" do
      expiring = { "ttl:seconds" => 5_000, "ttl:odd" => 123_457, "ttl:day" => 86_400_000 }
      expiring.each { |key, px| secondary.set(key, "v", px: px) }
      secondary.hset("ttl:hash", "f", "v")
      secondary.pexpire("ttl:hash", 42_000)
      secondary.set("persistent:string", "v")
      secondary.rpush("persistent:list", "v")

      store.backfill

      keys = expiring.keys + ["ttl:hash"]
      pttls(primary, keys).zip(pttls(secondary, keys), keys).each do |on_primary, on_secondary, key|
        expect(on_primary).to be_within(50).of(on_secondary), "#{key}: #{on_primary} ms vs #{on_secondary} ms"
      end
      expect(pttls(primary, %w[persistent:string persistent:list])).to eq([-1, -1])
    end

    it "takes the time until the primary restores the key off its TTL: the copy never outlives the original" do
      secondary.set("ttl:slow-primary", "v", px: 60_000)
      # The primary holds writes for 300 ms: its RESTOREs run that long after the TTLs were read
      # (what a busy primary, or the upload of a big value, does).
      primary.call("CLIENT", "PAUSE", "300", "WRITE")

      store.backfill

      on_secondary = secondary.pttl("ttl:slow-primary")
      expect(primary.pttl("ttl:slow-primary")).to be_within(50).of(on_secondary)
    end

    it "copies binary keys and values: invalid UTF-8 and NUL bytes" do
      binary = {
        "\xFF\xFE\x80invalid".b => "\x00\xFF\x01".b,
        "nul\x00in\x00the\x00middle".b => "value\x00with\x00nuls".b,
        "\x00".b => "".b
      }
      binary.each { |key, value| secondary.set(key, value) }
      secondary.rpush("list:\xC3\x28".b, ["\xC3\x28".b, "\x00".b])

      report = store.backfill

      expect(report).to have_attributes(scanned: 4, copied: 4, failed: 0)
      binary.each { |key, value| expect(primary.get(key).b).to eq(value) }
      expect(primary.lrange("list:\xC3\x28".b, 0, -1).map(&:b)).to eq(["\xC3\x28".b, "\x00".b])
      expect(primary.keys.map(&:b).sort).to eq(binary.keys.push("list:\xC3\x28".b).sort)
    end

    it "restricts the copy to a binary glob with match:" do
      secondary.set("\xFFprefix:1".b, "binary")
      secondary.set("plain:1", "text")

      report = store.backfill(match: "\xFFprefix:*".b)

      expect(report).to have_attributes(scanned: 1, copied: 1)
      expect(primary.keys.map(&:b)).to eq(["\xFFprefix:1".b])
    end

    it "copies a 10 MB string and a hash of 100,000 fields" do
      big = SecureRandom.random_bytes(10 * 1024 * 1024)
      secondary.set("big:string", big)
      (0...100_000).each_slice(5_000) do |fields|
        secondary.hset("big:hash", fields.flat_map { |i| ["field-#{i}", "value-#{i}"] })
      end

      report = store.backfill

      expect(report).to have_attributes(copied: 2, failed: 0)
      expect(primary.strlen("big:string")).to eq(big.bytesize)
      expect(primary.get("big:string").b == big).to be(true), "the 10 MB value differs on the primary"
      expect(primary.hlen("big:hash")).to eq(100_000)
      expect(primary.hgetall("big:hash")).to eq(secondary.hgetall("big:hash"))
    end

    it "copies only the keys matching the glob given as match:" do
      populate(secondary, 50, prefix: "session")
      populate(secondary, 30, prefix: "cache")

      report = store.backfill(match: "session:*")

      expect(report).to have_attributes(scanned: 50, copied: 50)
      expect(primary.keys("session:*").size).to eq(50)
      expect(primary.keys("cache:*")).to be_empty
    end

    it "reports exact counts: copied, already present, expired before it could be read" do
      populate(secondary, 40, prefix: "copy")
      populate(secondary, 10, prefix: "dual")
      populate(primary, 10, prefix: "dual")
      populate(secondary, 5, prefix: "expiring", px: 250)
      # The primary holds the backfill's first round trip (EXISTS) for 600 ms: the keys it has
      # just listed on the secondary expire before they can be read.
      primary.call("CLIENT", "PAUSE", "600", "ALL")

      report = store.backfill

      expect(report.to_h).to include(scanned: 55, copied: 40, already_present: 10, expired: 5, failed: 0, undone: 0,
                                     total: 55, done: true)
      expect(primary.keys("expiring:*")).to be_empty
      expect(primary.dbsize).to eq(50)
    end

    it "counts the keys the primary refuses as failed" do
      # Reads everywhere, writes only to ok:*: every other RESTORE is refused with NOPERM.
      restricted = dedicated_redis_server("--user", "default", "on", "nopass", "%R~*", "%W~ok:*", "+@all")
      populate(secondary, 6, prefix: "ok")
      populate(secondary, 4, prefix: "refused")
      restricted_store = described_class.new(restricted.url, secondary_server.url, "backfill")

      report = restricted_store.backfill

      expect(report).to have_attributes(scanned: 10, copied: 6, failed: 4)
      expect(report).to be_done
      expect(report).not_to be_ok
    ensure
      restricted_store&.close
    end

    it "yields its progress after every page, scanned growing up to total, the secondary's DBSIZE" do
      populate(secondary, 2_500, prefix: "paged")
      pages = []

      report = store.backfill(count: 200) { |progress| pages << progress }

      expect(pages.size).to be >= 5
      expect(pages.map(&:total).uniq).to eq([2_500])
      expect(pages.map(&:scanned).each_cons(2).to_a).to all(satisfy { |before, after| before <= after })
      expect(pages[0...-1]).to all(satisfy { |page| !page.done? })
      # Once every page is copied, a few more steps wait for the last second looks (a second
      # after the last copy), each yielding: not a step a page.
      copied_all = pages.index { |page| page.scanned == 2_500 }
      expect(copied_all).to be >= 5
      expect(pages.size - copied_all).to be_between(1, 8)
      expect(pages.last).to be_done
      expect(pages.last.scanned).to eq(2_500)
      expect(report).to eq(pages.last)
      expect(report.fraction).to eq(1.0)
    end

    it "copies no faster than rate: keys per second" do
      populate(secondary, 300, prefix: "paced")

      report = store.backfill(rate: 1_000)

      expect(report.copied).to eq(300)
      expect(report.elapsed).to be >= 0.25
    end

    it "never overwrites a key the primary already holds: its newer value wins" do
      secondary.set("profile:1", "old", ex: 600)
      secondary.hset("settings:1", "theme", "light")
      # What dual-write left on the primary since the flag flipped.
      primary.set("profile:1", "new")
      primary.hset("settings:1", "theme", "dark")

      report = store.backfill

      expect(report).to have_attributes(scanned: 2, copied: 0, already_present: 2)
      expect(primary.get("profile:1")).to eq("new")
      expect(primary.ttl("profile:1")).to eq(-1)
      expect(primary.hgetall("settings:1")).to eq("theme" => "dark")
    end

    it "does not resurrect a key whose delete reaches the secondary only after the key was copied" do
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      secondary.set("doomed", "v")
      # The secondary holds writes for 300 ms: the DEL through the MultiStore reaches the primary
      # at once and the secondary only after the backfill has copied the key.
      secondary.call("CLIENT", "PAUSE", "300", "WRITE")
      deleting = Thread.new { store.del("doomed") }
      sleep 0.1

      report = store.backfill
      deleting.join

      expect(report).to be_done
      expect(secondary.exists?("doomed")).to be(false)
      expect(primary.exists?("doomed")).to be(false)
    end

    it "loses nothing and resurrects nothing while writers and deleters use the store" do
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      keys = 20_000
      populate(secondary, keys, prefix: "bulk")
      # Writers own the keys i % 3 == 0 (and new ones), deleters those with i % 3 == 1. Each
      # writer has keys of its own: two clients setting one key at once may leave the stores with
      # different winners (see README, "Concurrent writes to one key"), which is not what this pins.
      finished = false
      deleted = Array.new(2) { Set.new }
      written = Array.new(3) { 0 }
      failures = Queue.new

      writers = Array.new(3) do |t|
        Thread.new do
          n = 0
          until finished
            n += 1
            i = (rand(keys / 9) * 3 + t) * 3
            store.set("bulk:#{i}", "rewritten-#{t}-#{n}")
            store.set("new:#{t}:#{n}", n, ex: 600)
            written[t] += 2
          end
        rescue StandardError => e
          failures << e
        end
      end
      deleters = Array.new(2) do |t|
        Thread.new do
          until finished
            i = rand(keys / 3) * 3 + 1
            store.del("bulk:#{i}")
            deleted[t] << "bulk:#{i}"
          end
        rescue StandardError => e
          failures << e
        end
      end

      report = store.backfill(count: 250, rate: 50_000)
      finished = true
      (writers + deleters).each(&:join)

      expect(failures.size).to eq(0), -> { failures.pop.full_message }
      deleted = deleted.reduce(:|)
      expect(written.sum).to be > 100
      expect(deleted.size).to be > 50
      expect(report).to be_done.and be_ok
      expect(report.scanned).to eq(report.copied + report.already_present + report.expired + report.undone)

      lost = secondary.scan_each(count: 1_000).each_slice(1_000).flat_map do |batch|
        batch.zip(secondary.mget(*batch), primary.mget(*batch)).reject { |_key, want, got| want == got }
      end
      expect(lost).to be_empty

      resurrected = deleted.each_slice(1_000).flat_map do |batch|
        batch.zip(primary.mget(*batch), secondary.mget(*batch)).reject { |_key, *values| values == [nil, nil] }
      end
      expect(resurrected).to be_empty

      verification = store.verify
      expect(verification).to be_in_agreement
      expect(verification.readiness).to eq(100.0)
    end
  end

  describe "#backfill while the flags change or the caller gives up" do
    it "stops when the primary becomes the default store, bringing back none of the keys deleted since" do
      populate(secondary, 4_000, prefix: "key")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      deleted = []

      expect do
        store.backfill(count: 10) do |page|
          next unless page.scanned >= 100 && deleted.empty?

          flags.set(:use_primary_store_as_default_for_backfill) # the new store alone from here
          (2_000...4_000).step(3) { |i| store.del("key:#{i}") && deleted << "key:#{i}" }
        end
      end.to raise_error(Gitlab::Redis::MultiStore::BackfillAfterSwitchError, /became the default store/)
      expect(deleted.count { |key| primary.exists?(key) }).to eq(0)
    end

    it "stops a page in flight when the flags make the primary the only store written, so no delete made there comes back" do
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      store.mset(*Array.new(5_000) { |i| ["x:#{i}", i.to_s] }.flatten) # on both stores
      populate(secondary, 20_000, prefix: "old")
      deleted = []
      switch = Queue.new
      operator = Thread.new do
        switch.pop
        flags.set(:use_primary_store_as_default_for_backfill) # the new store alone, mid-page
        (0...5_000).each_slice(500) { |slice| store.del(*slice.map { |i| "x:#{i}" }) && deleted.concat(slice) }
      end

      expect do
        switch << :now
        store.backfill(count: 10_000)
      end.to raise_error(Gitlab::Redis::MultiStore::BackfillAfterSwitchError)
      operator.join

      expect([deleted.size, deleted.count { |i| primary.exists?("x:#{i}") }]).to eq([5_000, 0])
    end

    it "stops in its final settle delay when the primary becomes the only store written, keeping the application's writes" do
      populate(secondary, 50, prefix: "key")
      secondary.set("t", "old", px: 700)
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      operator = Thread.new do
        sleep 0.25 # the pages are copied by now: the backfill waits to look at them again
        flags.set(:use_primary_store_as_default_for_backfill) # the new store alone from here
        store.set("t", "new")
      end

      expect { store.backfill(count: 1_000) }.to raise_error(Gitlab::Redis::MultiStore::BackfillAfterSwitchError)
      operator.join
      sleep 0.8 # the secondary's "t" has expired

      expect([primary.get("t"), primary.pttl("t"), store.get("t")]).to eq(["new", -1, "new"])
    end

    it "never takes back a copy the primary has been written over since, by a process it cannot see switch" do
      populate(secondary, 50, prefix: "key")
      secondary.set("t", "old")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      other_process = Thread.new do
        sleep 0.25 # the pages are copied: the backfill waits to look at them again
        primary.set("t", "new") # written by a process whose flags say "primary only" already
        secondary.del("t") # gone from the old store, which nothing reads any more
      end

      report = store.backfill(count: 1_000)
      other_process.join

      expect(primary.get("t")).to eq("new")
      expect(report).to have_attributes(undone: 0, left_different: 1)
    end

    it "leaves no key deleted during its copy on the primary when the secondary stalls right after a page's RESTOREs" do
      populate(secondary, 2_000, prefix: "key")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      stalling = described_class.new({ url: primary_server.url, timeout: 0.5 }, { url: secondary_server.url, timeout: 0.5 },
                                     "backfill", feature_flags: flags, on_error: ->(_e, _c) {})
      deleted = []
      expect do
        stalling.backfill(count: 100) do
          next unless deleted.empty?

          # The next page is already read: its keys are RESTOREd after they were deleted.
          deleted = secondary.keys("key:*") - primary.keys("key:*")
          deleted.each_slice(100) { |keys| stalling.del(*keys) }
          sleep 0.5
          Process.kill(:STOP, secondary_server.pid) # the first look after the RESTOREs times out
        end
      end.to raise_error(Redis::TimeoutError)
      Process.kill(:CONT, secondary_server.pid)

      # The keys the failed step could not look at are the re-sync's now.
      sleep 0.05 until deleted.none? { |key| primary.exists?(key) } || (@waited = (@waited || 0) + 1) > 60
      expect([deleted.size, deleted.count { |key| primary.exists?(key) }]).to match([be > 1_000, 0])
      expect(deleted.filter_map { |key| stalling.get(key) }).to be_empty
    ensure
      Process.kill(:CONT, secondary_server.pid)
      stalling&.close
    end

    it "returns at once when its thread is raised into while a store hangs, whatever the read timeout" do
      populate(secondary, 20_000, prefix: "key")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      hanging = dedicated_redis_server
      slow = described_class.new({ url: hanging.url, read_timeout: 30 }, { url: secondary_server.url, read_timeout: 30 },
                                 "backfill_hang", feature_flags: ->(flag) { flag.to_s.start_with?("use_primary_and_secondary") },
                                                 on_error: ->(_e, _c) {})
      pages = 0
      backfill = Thread.new do
        slow.backfill(count: 100) { pages += 1 }
      rescue Interrupt
        :interrupted
      end
      sleep 0.01 until pages > 3 || !backfill.alive?
      Process.kill(:STOP, hanging.pid)
      sleep 0.3
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)

      backfill.raise(Interrupt)
      outcome = backfill.join(5)&.value

      expect([outcome, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started]).to match([:interrupted, be < 2])
    ensure
      Process.kill(:CONT, hanging.pid) if hanging
      slow&.close
    end
  end

  describe "#backfill with max_latency:" do
    it "holds back while the secondary answers slower than the bound, then finishes" do
      populate(secondary, 2_000, prefix: "key")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      slow = true
      # Another client keeps the old store busy: each DEBUG SLEEP delays every other command.
      busy = Thread.new do
        client = secondary_server.client
        client.call("DEBUG", "SLEEP", "0.05") while slow
        client.close
      end
      pages = []
      report = store.backfill(count: 200, max_latency: 0.02) do |progress|
        pages << progress.holding_back
        slow = false if pages.size == 3
      end
      busy.join

      aggregate_failures do
        expect(report.copied).to eq(2_000)
        expect(report.held_back).to be_positive
        expect(pages.first(3)).to include(true)
        expect(pages.last).to be(false)
      end
    end

    it "does not hold back a backfill whose secondary answers fast" do
      populate(secondary, 500, prefix: "key")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)

      report = store.backfill(count: 100, max_latency: 0.5)

      expect([report.copied, report.held_back]).to eq([500, 0.0])
    end
  end

  describe "#backfill with a checkpoint" do
    # Evaluated before any fork: each child must use this one file.
    let!(:checkpoint) { File.join(Dir.mktmpdir("gitlab-multistore-checkpoint-"), "backfill.json") }

    # Runs the block (given a MultiStore of its own) in a child process, killed (SIGKILL: no
    # ensure runs) after `seconds`, or left to finish: its exit status, or :killed. The child
    # writes the report the block returns next to the checkpoint.
    def in_a_child(seconds)
      pid = fork do
        child = described_class.new(primary_server.url, secondary_server.url, "backfill", feature_flags: flags)
        report = yield child
        File.write("#{checkpoint}.report", JSON.generate(report.to_h))
        exit!(report.done? ? 0 : 1)
      rescue Exception => e # rubocop:disable Lint/RescueException -- the child reports why it stopped
        warn "child: #{e.class}: #{e.message}"
        exit!(2)
      end
      if seconds
        sleep seconds
        Process.kill(:KILL, pid)
      end
      _, status = Process.wait2(pid)
      status.signaled? ? :killed : status.exitstatus
    end

    def backfill_in_a_child(seconds, resume:)
      in_a_child(seconds) { |store| store.backfill(count: 200, rate: 40_000, checkpoint: checkpoint, resume: resume) }
    end

    it "looks again at the last pages after being interrupted in its final settle delay and resumed" do
      populate(secondary, 3_000, prefix: "key")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      # Changed in place on both stores while the last page is in flight -- by another process
      # writing the primary first -- so the EXPIRE does nothing on the primary, which has no copy yet.
      expired = []
      interrupter = nil
      expect do
        store.backfill(count: 1_000, checkpoint: checkpoint) do |page|
          if expired.empty? # the next page is read already: its copies miss the EXPIRE
            expired = secondary.keys("key:*") - primary.keys("key:*")
            primary.pipelined { |p| expired.each { |key| p.expire(key, 500) } }
            secondary.pipelined { |p| expired.each { |key| p.expire(key, 500) } }
          elsif page.scanned >= 3_000 && interrupter.nil?
            backfill = Thread.current # every page copied: the second looks are a second away
            interrupter = Thread.new { sleep 0.3 and backfill.raise(Interrupt) }
          end
        end
      end.to raise_error(Interrupt)
      interrupter.join

      report = store.backfill(count: 1_000, checkpoint: checkpoint, resume: true)

      expect(report).to be_done
      expect(report.scanned).to be < 4_500 # the walk was finished: not scanned a second time
      expect([expired.size, expired.count { |key| primary.pttl(key) == -1 }]).to match([be >= 1_000, 0])
      expect(store.verify).to be_in_agreement
    end

    it "survives being killed at random points: the resumed runs copy everything, once, and never over newer data" do
      primary.ping # both shared servers started here, not in a child
      populate(secondary, 20_000, prefix: "key")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      random = Random.new(RSpec.configuration.seed)
      outcomes = [backfill_in_a_child(0.1 + random.rand * 0.1, resume: false)]
      newer = []
      until outcomes.last == 0 || outcomes.size > 40
        # Meanwhile the application writes: dual-written values the backfill must not overwrite.
        5.times do
          i = random.rand(20_000)
          store.set("key:#{i}", "newer-#{i}")
          newer << i
        end
        outcomes << backfill_in_a_child(outcomes.size < 6 ? 0.05 + random.rand * 0.15 : nil, resume: true)
      end

      report = JSON.parse(File.read("#{checkpoint}.report"), symbolize_names: true)
      kills = outcomes.count(:killed)
      puts format("    [backfill] killed %d times, resumed %d: scanned %d, copied %d, already present %d, " \
                  "%d newer values kept", kills, outcomes.size - 1, report[:scanned], report[:copied],
                  report[:already_present], newer.uniq.size)

      aggregate_failures do
        expect(kills).to be >= 3
        expect(outcomes.last).to eq(0)
        # Counted across the runs: each kill made the next run scan at most one page again.
        expect(report[:scanned]).to be_between(20_000, 20_000 + kills * 200)
        expect(report[:failed]).to eq(0)
        expect(report[:copied] + report[:already_present] + report[:expired]).to eq(report[:scanned])
        expect(report[:copied]).to be <= 20_000
        expect(File.exist?(checkpoint)).to be(false)
        expect(primary.dbsize).to eq(20_000)
        expected = (0...20_000).map { |i| newer.include?(i) ? "newer-#{i}" : "value-#{i}" }
        expect(primary.mget(*(0...20_000).map { |i| "key:#{i}" }) == expected).to be(true)
        expect(store.verify).to be_in_agreement
      end
    end

    it "resumes a verify killed at random points, with every difference counted once" do
      primary.ping
      populate(secondary, 20_000, prefix: "key")
      populate(primary, 20_000, prefix: "key")
      10.times { |i| primary.set("key:#{i * 1000}", "changed") } # different
      7.times { |i| primary.del("key:#{i * 1000 + 1}") }        # missing on the primary
      3.times { |i| primary.set("only-new:#{i}", "x") }          # only on the primary
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      verify_in_a_child = lambda do |seconds, resume|
        in_a_child(seconds) { |store| store.verify(count: 200, checkpoint: checkpoint, resume: resume) }
      end
      random = Random.new(RSpec.configuration.seed)
      outcomes = [verify_in_a_child.call(0.05 + random.rand * 0.1, false)]
      outcomes << verify_in_a_child.call(outcomes.size < 4 ? 0.05 + random.rand * 0.1 : nil, true) until outcomes.last == 0 || outcomes.size > 30
      report = JSON.parse(File.read("#{checkpoint}.report"), symbolize_names: true)

      aggregate_failures do
        expect(outcomes.count(:killed)).to be >= 2
        expect(outcomes.last).to eq(0)
        expect(report.slice(:checked, :different, :missing_on_primary, :only_on_primary))
          .to eq(checked: 20_000, different: 10, missing_on_primary: 7, only_on_primary: 3)
        expect(File.exist?(checkpoint)).to be(false)
      end
    end

    it "refuses a checkpoint of another backfill, and resumes nothing when there is none" do
      populate(secondary, 300, prefix: "key")
      flags.enable(:use_primary_and_secondary_stores_for_backfill)
      File.write(checkpoint, JSON.generate("format" => 1, "for" => { "instance_name" => "other" }, "progress" => {}))

      expect { store.backfill(checkpoint: checkpoint, resume: true) }.to raise_error(ArgumentError, /is for another backfill/)
      File.delete(checkpoint)
      expect(store.backfill(checkpoint: checkpoint, resume: true).copied).to eq(300)
      expect { store.backfill(resume: true) }.to raise_error(ArgumentError, /needs a checkpoint/)
    end
  end

  describe "#verify" do
    # 10 keys that agree and 9 that do not, each in one way.
    before do
      populate(secondary, 10, prefix: "same")
      populate(primary, 10, prefix: "same")
      secondary.hset("same:hash", "a", "1")
      primary.hset("same:hash", "a", "1")
      secondary.set("same:ttl", "v", px: 60_000)
      primary.set("same:ttl", "v", px: 59_800) # within the tolerance: TTLs tick down between reads

      populate(secondary, 3, prefix: "missing")
      secondary.set("different:value", "secondary")
      primary.set("different:value", "primary")
      secondary.rpush("different:order", %w[a b])
      primary.rpush("different:order", %w[b a])
      secondary.set("different:type", "string")
      primary.rpush("different:type", "string")
      secondary.set("different:ttl", "v", ex: 3_600)
      primary.set("different:ttl", "v", ex: 60)
      secondary.set("different:persistence", "v")
      primary.set("different:persistence", "v", ex: 3_600)
      populate(primary, 2, prefix: "only-on-primary")
    end

    it "finds keys missing on the primary, different in value, type or TTL, and only on the primary" do
      report = store.verify

      expect(report.to_h).to include(checked: 20, agree: 12, missing_on_primary: 3, different: 5,
                                     only_on_primary: 2, repaired: 0, repair_failed: 0, total: 20, done: true)
      expect(report.readiness).to eq(60.0)
      expect(report).not_to be_in_agreement
    end

    it "repairs every difference with repair: true, after which a second verify agrees" do
      report = store.verify(repair: true)

      expect(report).to have_attributes(missing_on_primary: 3, different: 5, only_on_primary: 2, repaired: 10,
                                        repair_failed: 0)
      expect(report).to be_in_agreement

      again = store.verify
      expect(again).to have_attributes(checked: 20, agree: 20, missing_on_primary: 0, different: 0, only_on_primary: 0)
      expect(again).to be_in_agreement
      expect(again.readiness).to eq(100.0)
      secondary.keys.each { |key| expect(contents(primary, key)).to eq(contents(secondary, key)), key }
      expect(primary.keys("only-on-primary:*")).to be_empty
      expect(primary.ttl("different:ttl")).to be > 3_500
      expect(primary.ttl("different:persistence")).to eq(-1)
    end

    it "checks only the keys matching match:" do
      report = store.verify(match: "different:*")

      expect(report).to have_attributes(checked: 5, agree: 0, different: 5, missing_on_primary: 0, only_on_primary: 0)
      expect(store.verify(match: "same:*")).to be_in_agreement
    end

    it "checks sample: random keys of the secondary instead of all of them" do
      report = store.verify(sample: 8)

      expect(report).to have_attributes(checked: 8, total: 8, only_on_primary: 0)
      expect(report.agree + report.missing_on_primary + report.different).to eq(8)
      expect(report).to be_done
    end

    it "yields its progress after every page" do
      pages = []

      store.verify(count: 5) { |progress| pages << progress }

      expect(pages.size).to be >= 4
      expect(pages.map(&:total).uniq).to eq([20])
      expect(pages.map(&:checked).each_cons(2).to_a).to all(satisfy { |before, after| before <= after })
      expect(pages.last).to be_done
      expect(pages.last.checked).to eq(20)
    end
  end

  describe "#verify with sample:" do
    it "samples the given number of keys among those matching match:" do
      populate(secondary, 100, prefix: "wanted")
      populate(secondary, 100, prefix: "other")

      report = store.verify(sample: 50, match: "wanted:*")

      expect(report).to have_attributes(checked: 50, missing_on_primary: 50)
    end

    it "reports no key checked when the secondary has none to sample" do
      report = store.verify(sample: 10)

      expect(report).to have_attributes(checked: 0, agree: 0, missing_on_primary: 0, different: 0)
      expect(report).to be_done.and be_in_agreement
    end
  end

  it "digests sets and hashes canonically: same content in a different insertion order agrees" do
    members = (1..200).map { |i| "member-#{i}" }
    small = %w[a b c]
    fields = (1..200).flat_map { |i| ["field-#{i}", "value-#{i}"] }
    secondary.sadd("set:big", members)
    primary.sadd("set:big", members.reverse)
    secondary.sadd("set:small", small)
    primary.sadd("set:small", small.reverse)
    secondary.hset("hash:big", fields)
    primary.hset("hash:big", fields.each_slice(2).to_a.reverse.flatten)
    secondary.hset("hash:small", "x", "1", "y", "2")
    primary.hset("hash:small", "y", "2", "x", "1")
    # The servers' own serialisations differ, which is why verify cannot compare DUMPs.
    expect(primary.dump("hash:small")).not_to eq(secondary.dump("hash:small"))

    report = store.verify

    expect(report).to have_attributes(checked: 4, agree: 4, different: 0)
    expect(report).to be_in_agreement
  end

  it "keeps memory flat over 200,000 keys, and reports the throughput" do
    secondary.call("DEBUG", "POPULATE", "200000", "key", "10")
    GC.start
    rss_before = rss_mb
    peak = rss_before

    backfill = store.backfill { peak = [peak, rss_mb].max }
    verification = store.verify { peak = [peak, rss_mb].max }
    GC.start
    rss_after = rss_mb

    warn format("\n[200,000 keys] backfill %<backfill_s>.2fs (%<backfill_rate>.0f keys/s), " \
                "verify %<verify_s>.2fs (%<verify_rate>.0f keys/s), " \
                "RSS %<before>.1f MB before, %<peak>.1f MB peak, %<after>.1f MB after",
                backfill_s: backfill.elapsed, backfill_rate: backfill.rate,
                verify_s: verification.elapsed, verify_rate: verification.rate,
                before: rss_before, peak: peak, after: rss_after)
    expect(backfill).to have_attributes(scanned: 200_000, copied: 200_000, failed: 0)
    expect(verification).to have_attributes(checked: 200_000, agree: 200_000)
    expect(verification).to be_in_agreement
    expect(peak - rss_before).to be < 50
    expect(rss_after - rss_before).to be < 50
  end
end
