# frozen_string_literal: true

require "digest"

# Differential spec: every example runs the same block of redis-rb calls twice -- through a plain
# redis-rb 4.8 client and through a MultiStore -- each against its own empty database, and expects
# identical outcomes: the same return value, with the same classes and string encodings all the
# way down, or the same exception class, message and message encoding. The whole suite runs in
# each of the four flag states, with each read strategy; with dual-write on, both stores must
# also hold the same afterwards.
module MultiStoreDifferential
  PLAIN_DB = 1
  MULTI_DB = 2

  BINARY = "\xFF\x00\xFEbin\x00ary\x80".b
  INVALID_UTF8 = "\xC3\x28\x00\xFF".dup.force_encoding(Encoding::UTF_8).freeze
  MULTIBYTE = "ключ-🔑-鍵"
  ALL_BYTES = (0..255).map(&:chr).join.b.freeze
  ONE_MEGABYTE = (ALL_BYTES * 4096).freeze

  Outcome = ::CallOutcome

  DUAL_WRITE = :use_primary_and_secondary_stores_for_differential
  PRIMARY_DEFAULT = :use_primary_store_as_default_for_differential
  CONFIGURATIONS = [
    ["flags off", []],
    ["dual-write", [DUAL_WRITE]],
    ["dual-write, primary default", [DUAL_WRITE, PRIMARY_DEFAULT]],
    ["primary only", [PRIMARY_DEFAULT]]
  ].product(%i[primary_with_fallback default_only]).map { |(label, on), strategy| ["#{label}, #{strategy}", on, strategy] }

  # The examples live in this module so that they see its constants.
  CONFIGURATIONS.each do |configuration, enabled, strategy|
    RSpec.describe Gitlab::Redis::MultiStore, "compared with a plain redis-rb client (#{configuration})" do
      matcher :be_the_same_outcome_as do |expected|
        match { |actual| Outcome.same?(actual, expected) }

        failure_message do |actual|
          "MultiStore differs from redis-rb\n  redis-rb:   #{Outcome.brief(expected)}\n  MultiStore: #{Outcome.brief(actual)}"
        end
      end

      # Each example body receives the client under test and a plain client on the same database
      # (to change data behind the client's back, as another process would).
      def self.it_matches_redis_rb(description, raises: nil, &block)
        it(description, caller: caller) { expect_same_outcome(raises: raises, &block) }
      end

      let(:clients) { [] }
      # On the server the MultiStore answers from, so that what differs between servers (the
      # order CONFIG GET lists settings in) does not count.
      let(:plain) { track(default_server.client(db: PLAIN_DB)) }
      let(:flags) { MultiStoreHelpers::FlagSource.new.tap { |f| f.enable(*enabled) } }
      let(:dual_write?) { enabled.include?(DUAL_WRITE) }
      let(:read_strategy) { strategy }
      let(:default_server) { enabled.include?(PRIMARY_DEFAULT) ? primary_server : secondary_server }
      let(:multi) do
        track(described_class.new(primary_server.url(MULTI_DB), secondary_server.url(MULTI_DB), "differential",
                                  feature_flags: flags, read_strategy: read_strategy))
      end

      after do
        clients.each(&:close)
        primary_server.client(db: MULTI_DB).tap { |c| c.flushdb; c.close }
      end

      def track(client)
        clients << client
        client
      end

      # The bystander writes behind the client's back, as another process would: for the
      # MultiStore, another process's MultiStore of the same stores and flags.
      def outcomes(&block)
        [[plain, PLAIN_DB], [multi, MULTI_DB]].map do |redis, db|
          bystander = redis.equal?(multi) ? another_process : track(default_server.client(db: db))
          Outcome.capture { instance_exec(redis, bystander, &block) }
        end
      end

      def another_process
        track(described_class.new(primary_server.url(MULTI_DB), secondary_server.url(MULTI_DB), "differential",
                                  feature_flags: flags, read_strategy: read_strategy))
      end

      # With dual-write on, what the calls left must be the same on both stores (once what a store
      # missed was re-synced).
      def expect_both_stores_alike
        return unless dual_write?

        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 3
        sleep 0.01 until multi.migration_status[:journal_keys].zero? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        stores = [primary_server, secondary_server].map { |server| track(server.client(db: MULTI_DB)) }
        keys = stores.flat_map { |c| c.keys("*") }.uniq.sort
        held = stores.map { |c| keys.map { |k| [k, *contents(c, k), c.ttl(k).positive?] } }
        expect(held[0]).to eq(held[1]), "the stores differ after the calls"
      end

      # `raises` pins what redis-rb itself does, so an example cannot pass by both sides failing the
      # same unintended way (a typo in the spec, say).
      def expect_same_outcome(raises: nil, &block)
        expected, actual = outcomes(&block)

        if raises
          expect(expected[0..1]).to eq([:raised, raises]), "redis-rb itself: #{Outcome.brief(expected)}"
        else
          expect(expected.first).to eq(:ok), "redis-rb itself raised: #{Outcome.brief(expected)}"
        end
        expect(actual).to be_the_same_outcome_as(expected)
        expect_both_stores_alike
      end

      describe "the outcome comparison" do
        def same?(left, right)
          Outcome.same?(Outcome.capture { left }, Outcome.capture { right })
        end

        it "tells a binary string from the same bytes in UTF-8" do
          expect(same?("abc", "abc".b)).to be(false)
          expect(same?("abc", +"abc")).to be(true)
        end

        it "tells an Integer from an equal Float, and 0.0 from -0.0" do
          expect(same?(1, 1.0)).to be(false)
          expect(same?(0.0, -0.0)).to be(false)
          expect(same?(1.5, 1.5)).to be(true)
        end

        it "looks into nested Arrays and Hashes, keys included" do
          expect(same?([["a", [1, nil]]], [["a", [1, nil]]])).to be(true)
          expect(same?([["a", [1, nil]]], [["a", [1.0, nil]]])).to be(false)
          expect(same?({ "k" => ["v"] }, { "k".b => ["v"] })).to be(false)
          expect(same?({ "k" => ["v"] }, { "k" => ["v".b] })).to be(false)
          expect(same?({ "k" => true }, { "k" => 1 })).to be(false)
        end

        it "tells true, false, nil and their string forms apart" do
          expect(same?([true, false, nil], [true, false, nil])).to be(true)
          expect(same?([true], ["true"])).to be(false)
          expect(same?([nil], [""])).to be(false)
        end

        it "compares exceptions by class, message and message encoding" do
          expect(Outcome.capture { raise Redis::CommandError, "ERR x" })
            .to eq(Outcome.capture { raise Redis::CommandError, "ERR x" })
          expect(Outcome.capture { raise Redis::CommandError, "ERR x" })
            .not_to eq(Outcome.capture { raise Redis::BaseError, "ERR x" })
          expect(Outcome.capture { raise Redis::CommandError, "ERR x" })
            .not_to eq(Outcome.capture { raise Redis::CommandError, "ERR x".b })
        end
      end

      describe "strings" do
        it_matches_redis_rb("SET then GET") { |r| [r.set("k", "v"), r.get("k"), r.get("missing")] }
        it_matches_redis_rb("SET with EX") { |r| [r.set("k", "v", ex: 100), r.ttl("k")] }
        it_matches_redis_rb("SET with PX") { |r| [r.set("k", "v", px: 100_000), r.pttl("k").between?(99_000, 100_000)] }
        it_matches_redis_rb("SET with EXAT") { |r| [r.set("k", "v", exat: Time.now.to_i + 100), r.ttl("k").between?(99, 100)] }
        it_matches_redis_rb("SET with NX on a new and an existing key") { |r| [r.set("k", "1", nx: true), r.set("k", "2", nx: true), r.get("k")] }
        it_matches_redis_rb("SET with XX on a missing and an existing key") { |r| [r.set("k", "1", xx: true), r.set("k", "1"), r.set("k", "2", xx: true), r.get("k")] }
        it_matches_redis_rb("SET with KEEPTTL") { |r| [r.set("k", "1", ex: 100), r.set("k", "2", keepttl: true), r.ttl("k")] }
        it_matches_redis_rb("SET with GET") { |r| [r.set("k", "1", get: true), r.set("k", "2", get: true), r.get("k")] }
        it_matches_redis_rb("SET with NX and GET") { |r| [r.set("k", "1"), r.set("k", "2", nx: true, get: true)] }
        it_matches_redis_rb("SET with an invalid expire time", raises: Redis::CommandError) { |r| r.set("k", "v", ex: 0) }
        it_matches_redis_rb("SET with both EX and PX", raises: Redis::CommandError) { |r| r.set("k", "v", ex: 1, px: 1) }
        it_matches_redis_rb("GETSET") { |r| [r.getset("k", "1"), r.getset("k", "2")] }
        it_matches_redis_rb("GETDEL") { |r| r.set("k", "v"); [r.getdel("k"), r.getdel("k"), r.exists?("k")] }
        it_matches_redis_rb("GETEX with EX and PERSIST") { |r| r.set("k", "v"); [r.getex("k", ex: 100), r.ttl("k"), r.getex("k", persist: true), r.ttl("k"), r.getex("missing")] }
        it_matches_redis_rb("MSET and MGET") { |r| [r.mset("a", 1, "b", 2), r.mget("a", "b", "missing"), r.mget(["a", "b"])] }
        it_matches_redis_rb("MSET with an odd number of arguments", raises: Redis::CommandError) { |r| r.mset("a") }
        it_matches_redis_rb("MSETNX") { |r| [r.msetnx("a", 1, "b", 2), r.msetnx("b", 3, "c", 4), r.mget("a", "b", "c")] }
        it_matches_redis_rb("MAPPED_MSET and MAPPED_MGET") { |r| [r.mapped_mset(a: 1, "b" => 2.5), r.mapped_mget("a", "b", "missing")] }
        it_matches_redis_rb("MAPPED_MSETNX") { |r| [r.mapped_msetnx("a" => 1), r.mapped_msetnx("a" => 2, "b" => 2), r.get("a")] }
        it_matches_redis_rb("INCR, INCRBY, DECR, DECRBY") { |r| [r.incr("n"), r.incrby("n", 10), r.decr("n"), r.decrby("n", 20), r.incrby("n", -5)] }
        it_matches_redis_rb("INCRBYFLOAT") { |r| [r.incrbyfloat("f", 1.5), r.incrbyfloat("f", -0.25), r.incrbyfloat("f", 1e20), r.get("f")] }
        it_matches_redis_rb("INCRBYFLOAT to a whole number") { |r| [r.incrbyfloat("f", 2.5), r.incrbyfloat("f", 0.5)] }
        it_matches_redis_rb("INCR on a value that is not an integer", raises: Redis::CommandError) { |r| r.set("k", "abc"); r.incr("k") }
        it_matches_redis_rb("INCRBY beyond 64 bits", raises: Redis::CommandError) { |r| r.incrby("n", 2**64) }
        it_matches_redis_rb("INCRBYFLOAT on a non-float", raises: Redis::CommandError) { |r| r.set("k", "abc"); r.incrbyfloat("k", 1) }
        it_matches_redis_rb("APPEND and STRLEN") { |r| [r.append("k", "ab"), r.append("k", MULTIBYTE), r.strlen("k"), r.get("k"), r.strlen("missing")] }
        it_matches_redis_rb("GETRANGE, cutting a multibyte character") { |r| r.set("k", MULTIBYTE); [r.getrange("k", 0, 2), r.getrange("k", -4, -1), r.getrange("missing", 0, 1)] }
        it_matches_redis_rb("SETRANGE past the end pads with NUL bytes") { |r| [r.setrange("k", 5, "x"), r.get("k"), r.setrange("k", 0, "ab"), r.get("k")] }
        it_matches_redis_rb("SETEX, PSETEX, SETNX") { |r| [r.setex("a", 100, "1"), r.ttl("a"), r.psetex("b", 100_000, "2"), r.pttl("b") > 99_000, r.setnx("c", "3"), r.setnx("c", "4"), r.mget("a", "b", "c")] }
        it_matches_redis_rb("SETBIT, GETBIT, BITCOUNT") { |r| [r.setbit("b", 7, 1), r.setbit("b", 7, 0), r.setbit("b", 9, 1), r.getbit("b", 9), r.getbit("b", 100), r.bitcount("b"), r.bitcount("b", 0, 0), r.get("b")] }
        it_matches_redis_rb("BITOP") { |r| r.set("a", "\xF0".b); r.set("b", "\x3C".b); [r.bitop(:and, "and", "a", "b"), r.get("and"), r.bitop("XOR", "xor", ["a", "b"]), r.get("xor"), r.bitop(:not, "not", "a"), r.get("not")] }
        it_matches_redis_rb("BITPOS") { |r| r.set("k", "\x00\x0F\xFF".b); [r.bitpos("k", 1), r.bitpos("k", 0, 1), r.bitpos("k", 1, 2, 2), r.bitpos("missing", 1)] }
        it_matches_redis_rb("a string command on a list", raises: Redis::CommandError) { |r| r.lpush("l", "x"); r.get("l") }
      end

      describe "argument conversion" do
        it_matches_redis_rb("Symbols as keys and values") { |r| [r.set(:sym, :val), r.get("sym"), r.get(:sym), r.hset(:h, :f, :v), r.hgetall("h")] }
        it_matches_redis_rb("Integers, big Integers and negative Integers") { |r| r.mset(1, 2, "big", 2**70, "neg", -7); [r.get("1"), r.get(1), r.get("big"), r.get("neg")] }
        it_matches_redis_rb("Floats: 1.5, 1e20, -0.0, Infinity") { |r| r.mset("a", 1.5, "b", 1e20, "c", -0.0, "d", Float::INFINITY, "e", 0.1 + 0.2); r.mget("a", "b", "c", "d", "e") }
        it_matches_redis_rb("nil values are sent as empty strings") { |r| [r.set("k", nil), r.get("k"), r.hset("h", "f", nil), r.hget("h", "f"), r.rpush("l", [nil, "x"]), r.lrange("l", 0, -1)] }
        it_matches_redis_rb("true and false") { |r| r.set("t", true); r.set("f", false); [r.get("t"), r.get("f"), r.exists?(true)] }
        it_matches_redis_rb("other objects are sent as their to_s") { |r| r.mset("rational", Rational(1, 3), "range", 1..2, "time", Time.at(0).utc, "hash", { a: 1 }); r.mget("rational", "range", "time", "hash") }
        it_matches_redis_rb("nested arrays are flattened one level, deeper ones stringified") { |r| r.mset("a", 1, "b", 2, '["b"]', 3); r.mget(["a", ["b"]]) }
        it_matches_redis_rb("DEL with an array of keys") { |r| r.mset("a", 1, "b", 2, "c", 3); [r.del(["a", "b"]), r.del("c", ["missing"]), r.del([])] }
        it_matches_redis_rb("binary keys and values with invalid UTF-8 and NUL bytes") { |r| [r.set(BINARY, BINARY), r.get(BINARY), r.keys("*"), r.strlen(BINARY)] }
        it_matches_redis_rb("invalid UTF-8 tagged as UTF-8") { |r| [r.set(INVALID_UTF8, INVALID_UTF8), r.get(INVALID_UTF8), r.get(INVALID_UTF8.b), r.keys("*")] }
        it_matches_redis_rb("UTF-8 multibyte keys and values") { |r| [r.set(MULTIBYTE, MULTIBYTE), r.get(MULTIBYTE), r.strlen(MULTIBYTE), r.keys("*"), r.hset("h", MULTIBYTE, MULTIBYTE), r.hgetall("h")] }
        it_matches_redis_rb("strings in other encodings are sent as their bytes") { |r| r.set("é".encode("ISO-8859-1"), "hi".encode("UTF-16LE")); [r.keys("*"), r.get("\xE9".b), r.strlen("\xE9".b)] }
        it_matches_redis_rb("every byte value") { |r| r.set(ALL_BYTES, ALL_BYTES); [r.get(ALL_BYTES), r.exists?(ALL_BYTES)] }
        it_matches_redis_rb("a 1 MB value") { |r| [r.set("big", ONE_MEGABYTE), r.get("big"), r.strlen("big"), r.getrange("big", -3, -1)] }
        it_matches_redis_rb("a 1 MB value in a pipeline and a hash") { |r| [r.pipelined { |p| p.set("a", ONE_MEGABYTE); p.hset("h", "f", ONE_MEGABYTE); p.get("a"); p.hget("h", "f") }] }
        it_matches_redis_rb("an empty string key") { |r| [r.set("", "empty"), r.get(""), r.exists?(""), r.keys("*"), r.del("")] }
        it_matches_redis_rb("an empty string value") { |r| [r.set("k", ""), r.get("k"), r.strlen("k"), r.rpush("l", ""), r.lrange("l", 0, -1)] }
      end

      describe "keys" do
        it_matches_redis_rb("EXISTS and EXISTS?") { |r| r.mset("a", 1, "b", 2); [r.exists("a", "b", "a", "missing"), r.exists(["a", "b"]), r.exists?("a"), r.exists?("missing"), r.exists?("missing", "b")] }
        it_matches_redis_rb("EXISTS with no keys", raises: Redis::CommandError) { |r| r.exists }
        it_matches_redis_rb("DEL and UNLINK") { |r| r.mset("a", 1, "b", 2, "c", 3); [r.del("a"), r.del("a"), r.unlink("b", "c", "missing"), r.dbsize] }
        it_matches_redis_rb("EXPIRE, TTL, PERSIST") { |r| r.set("k", "v"); [r.ttl("k"), r.expire("k", 100), r.ttl("k"), r.persist("k"), r.persist("k"), r.ttl("k"), r.ttl("missing"), r.expire("missing", 1)] }
        it_matches_redis_rb("EXPIRE with NX, XX, GT, LT") { |r| r.set("k", "v"); [r.expire("k", 100, xx: true), r.expire("k", 100, nx: true), r.expire("k", 50, gt: true), r.expire("k", 50, lt: true), r.ttl("k")] }
        it_matches_redis_rb("PEXPIRE and PTTL") { |r| r.set("k", "v"); [r.pttl("k"), r.pexpire("k", 100_000), r.pttl("k").between?(99_000, 100_000), r.pttl("missing")] }
        it_matches_redis_rb("EXPIREAT and PEXPIREAT") { |r| r.mset("a", 1, "b", 2); [r.expireat("a", Time.now.to_i + 100), r.ttl("a").between?(99, 100), r.pexpireat("b", (Time.now.to_f * 1000).to_i + 100_000), r.pttl("b").between?(98_000, 100_000)] }
        it_matches_redis_rb("EXPIRE with a non-integer", raises: Redis::CommandError) { |r| r.set("k", "v"); r.expire("k", "soon") }
        it_matches_redis_rb("a key expiring") { |r| r.set("k", "v", px: 1); sleep 0.01; [r.get("k"), r.exists?("k"), r.ttl("k")] }
        it_matches_redis_rb("TYPE of every kind of key") do |r|
          r.set("s", 1); r.rpush("l", 1); r.sadd("set", [1]); r.zadd("z", 1, "m"); r.hset("h", "f", 1); r.xadd("x", { f: 1 }, id: "1-0")
          %w[s l set z h x missing].map { |key| r.type(key) }
        end
        it_matches_redis_rb("RENAME and RENAMENX") { |r| r.mset("a", 1, "b", 2); [r.rename("a", "c"), r.renamenx("c", "b"), r.renamenx("c", "d"), r.mget("a", "b", "c", "d")] }
        it_matches_redis_rb("RENAME of a missing key", raises: Redis::CommandError) { |r| r.rename("missing", "other") }
        it_matches_redis_rb("KEYS with patterns") { |r| r.mset("user:1", 1, "user:2", 2, "other", 3); [r.keys("user:*").sort, r.keys.sort, r.keys("nomatch*")] }
        it_matches_redis_rb("SCAN") { |r| r.mset("a", 1, "b", 2, "c", 3); cursor, keys = r.scan(0, count: 1000); [cursor, keys.sort] }
        it_matches_redis_rb("SCAN with MATCH and TYPE") { |r| r.mset("a1", 1, "a2", 2, "b", 3); r.rpush("a3", "x"); cursor, keys = r.scan(0, match: "a*", count: 1000, type: "string"); [cursor, keys.sort] }
        it_matches_redis_rb("SCAN_EACH") { |r| 30.times { |i| r.set("key:#{i}", i) }; [r.scan_each.to_a.sort, r.scan_each(match: "key:1*").to_a.sort] }
        it_matches_redis_rb("DUMP and RESTORE") { |r| r.rpush("l", ["a", BINARY]); payload = r.dump("l"); [payload, r.restore("copy", 0, payload), r.lrange("copy", 0, -1), r.dump("missing")] }
        it_matches_redis_rb("RESTORE onto an existing key", raises: Redis::CommandError) { |r| r.set("k", "v"); r.restore("k", 0, r.dump("k")) }
        it_matches_redis_rb("RESTORE with REPLACE and a TTL") { |r| r.set("k", "v"); payload = r.dump("k"); [r.restore("k", 100_000, payload, replace: true), r.ttl("k")] }
        it_matches_redis_rb("RESTORE with a bad payload", raises: Redis::CommandError) { |r| r.restore("k", 0, "garbage") }
        it_matches_redis_rb("OBJECT ENCODING and REFCOUNT") { |r| r.mset("i", 12, "s", "short", "long", "x" * 100); [r.object(:encoding, "i"), r.object("encoding", "s"), r.object(:encoding, "long"), r.object(:refcount, "s"), r.object(:encoding, "missing")] }
        it_matches_redis_rb("OBJECT FREQ without an LFU policy", raises: Redis::CommandError) { |r| r.set("k", "v"); r.object(:freq, "k") }
        it_matches_redis_rb("RANDOMKEY on an empty and on a one-key database") { |r| [r.randomkey, r.set("only", 1), r.randomkey] }
        it_matches_redis_rb("SORT") { |r| r.rpush("l", [3, 1, 2]); [r.sort("l"), r.sort("l", order: "desc", limit: [0, 2]), r.sort("missing")] }
        it_matches_redis_rb("SORT ALPHA with BY, GET and STORE") do |r|
          r.rpush("l", %w[b a c]); r.mset("w_a", 3, "w_b", 1, "w_c", 2, "v_a", "A", "v_b", "B")
          [r.sort("l", order: "alpha"), r.sort("l", by: "w_*", get: ["#", "v_*"]), r.sort("l", order: "alpha desc", store: "out"), r.lrange("out", 0, -1)]
        end
        it_matches_redis_rb("SORT of non-numbers", raises: Redis::CommandError) { |r| r.rpush("l", %w[b a]); r.sort("l") }
        it_matches_redis_rb("COPY") { |r| r.set("a", "v"); r.set("b", "old"); [r.copy("a", "c"), r.copy("a", "b"), r.copy("a", "b", replace: true), r.copy("missing", "d"), r.mget("a", "b", "c", "d")] }
      end

      describe "lists" do
        it_matches_redis_rb("LPUSH, RPUSH, LRANGE, LLEN") { |r| [r.lpush("l", "a"), r.lpush("l", %w[b c]), r.rpush("l", ["d", 5]), r.lrange("l", 0, -1), r.lrange("l", 1, 2), r.llen("l"), r.lrange("missing", 0, -1)] }
        it_matches_redis_rb("LPUSHX and RPUSHX") { |r| [r.lpushx("l", "a"), r.rpush("l", "x"), r.lpushx("l", "a"), r.rpushx("l", "z"), r.lrange("l", 0, -1)] }
        it_matches_redis_rb("LPOP and RPOP, with and without a count") { |r| r.rpush("l", %w[a b c d e]); [r.lpop("l"), r.lpop("l", 2), r.rpop("l"), r.rpop("l", 5), r.lpop("l"), r.lpop("l", 2), r.rpop("missing", 1)] }
        it_matches_redis_rb("LINDEX") { |r| r.rpush("l", %w[a b]); [r.lindex("l", 0), r.lindex("l", -1), r.lindex("l", 5), r.lindex("missing", 0)] }
        it_matches_redis_rb("LINSERT") { |r| r.rpush("l", %w[a c]); [r.linsert("l", :before, "c", "b"), r.linsert("l", "AFTER", "c", "d"), r.linsert("l", :before, "nope", "x"), r.linsert("missing", :before, "a", "b"), r.lrange("l", 0, -1)] }
        it_matches_redis_rb("LSET") { |r| r.rpush("l", %w[a b]); [r.lset("l", 1, "B"), r.lrange("l", 0, -1)] }
        it_matches_redis_rb("LSET out of range", raises: Redis::CommandError) { |r| r.rpush("l", %w[a b]); r.lset("l", 5, "x") }
        it_matches_redis_rb("LREM") { |r| r.rpush("l", %w[a b a c a]); [r.lrem("l", 2, "a"), r.lrem("l", 0, "zzz"), r.lrange("l", 0, -1)] }
        it_matches_redis_rb("LTRIM") { |r| r.rpush("l", %w[a b c d]); [r.ltrim("l", 1, 2), r.lrange("l", 0, -1), r.ltrim("l", 5, 10), r.exists?("l")] }
        it_matches_redis_rb("LMOVE and RPOPLPUSH") { |r| r.rpush("a", %w[1 2 3]); [r.lmove("a", "b", :left, :right), r.lmove("a", "b", "RIGHT", "LEFT"), r.rpoplpush("a", "b"), r.lmove("a", "b", :left, :left), r.lrange("b", 0, -1)] }
        it_matches_redis_rb("LMOVE with an invalid direction", raises: ArgumentError) { |r| r.lmove("a", "b", :up, :down) }
        it_matches_redis_rb("LPOS through method_missing and call") { |r| r.rpush("l", %w[a b c b]); [r.lpos("l", "b"), r.call(:lpos, "l", "b", "RANK", -1), r.call([:lpos, "l", "b", "COUNT", 0]), r.lpos("l", "z")] }
        it_matches_redis_rb("BLPOP and BRPOP with a timeout on an empty list") { |r| [r.blpop("empty", timeout: 0.1), r.brpop(["empty", "other"], timeout: 0.1)] }
        it_matches_redis_rb("BLPOP and BRPOP on a non-empty list") { |r| r.rpush("b", %w[1 2 3]); [r.blpop("a", "b", timeout: 1), r.brpop(["a", "b"], timeout: 1), r.blpop("b")] }
        it_matches_redis_rb("BLPOP with the deprecated positional timeout") { |r| r.rpush("l", %w[x y]); [r.blpop("l", 1), r.brpop("l", 1)] }
        it_matches_redis_rb("BLPOP on a key of the wrong type", raises: Redis::CommandError) { |r| r.set("s", "x"); r.blpop("s", timeout: 0.1) }
        it_matches_redis_rb("BRPOPLPUSH") { |r| r.rpush("src", %w[a b]); [r.brpoplpush("src", "dst", timeout: 1), r.brpoplpush("empty", "dst", timeout: 0.1), r.lrange("dst", 0, -1)] }
        it_matches_redis_rb("BLMOVE") { |r| r.rpush("src", %w[a b]); [r.blmove("src", "dst", :left, :right, timeout: 1), r.blmove("empty", "dst", "LEFT", "RIGHT", timeout: 0.1), r.lrange("dst", 0, -1)] }
        it_matches_redis_rb("BLPOP served by a push from another client") do |r, bystander|
          pusher = Thread.new { sleep 0.1; bystander.rpush("q", "late") }
          [r.blpop("q", timeout: 2), pusher.value]
        end
      end

      describe "sets" do
        it_matches_redis_rb("SADD, SADD?, SMEMBERS, SCARD") { |r| [r.sadd("s", "a"), r.sadd("s", %w[b c a]), r.sadd?("s", "d"), r.sadd?("s", "a"), r.sadd?("s", %w[a b]), r.smembers("s").sort, r.scard("s"), r.smembers("missing")] }
        it_matches_redis_rb("SREM and SREM?") { |r| r.sadd("s", %w[a b c d]); [r.srem("s", "a"), r.srem("s", %w[b x]), r.srem?("s", "c"), r.srem?("s", "c"), r.smembers("s")] }
        it_matches_redis_rb("SISMEMBER and SMISMEMBER") { |r| r.sadd("s", %w[a b]); [r.sismember("s", "a"), r.sismember("s", "z"), r.smismember("s", "a", "z", "b"), r.smismember("s", ["z"])] }
        it_matches_redis_rb("SINTER, SUNION, SDIFF") { |r| r.sadd("a", %w[1 2 3]); r.sadd("b", %w[2 3 4]); [r.sinter("a", "b").sort, r.sunion("a", "b").sort, r.sdiff("a", "b"), r.sdiff(["b", "a"]), r.sinter("a", "missing")] }
        it_matches_redis_rb("SINTERSTORE, SUNIONSTORE, SDIFFSTORE") { |r| r.sadd("a", %w[1 2 3]); r.sadd("b", %w[2 3 4]); [r.sinterstore("i", "a", "b"), r.sunionstore("u", ["a", "b"]), r.sdiffstore("d", "a", "b"), r.smembers("i").sort, r.smembers("u").sort, r.smembers("d")] }
        it_matches_redis_rb("SPOP") { |r| r.sadd("s", %w[only]); r.sadd("many", %w[a b c]); [r.spop("s"), r.spop("s"), r.spop("many", 10).sort, r.spop("missing", 2)] }
        it_matches_redis_rb("SRANDMEMBER") { |r| r.sadd("s", %w[only]); r.sadd("many", %w[a b c]); [r.srandmember("s"), r.srandmember("s", -3), r.srandmember("many", 10).sort, r.srandmember("missing"), r.srandmember("missing", 2)] }
        it_matches_redis_rb("SMOVE") { |r| r.sadd("a", %w[x y]); [r.smove("a", "b", "x"), r.smove("a", "b", "zz"), r.smembers("a"), r.smembers("b")] }
        it_matches_redis_rb("SSCAN_EACH and SSCAN") { |r| r.sadd("s", (1..50).map(&:to_s)); cursor, members = r.sscan("s", 0, count: 1000); [r.sscan_each("s").to_a.sort, r.sscan_each("s", match: "1*").to_a.sort, cursor, members.sort] }
        it_matches_redis_rb("a set command on a string", raises: Redis::CommandError) { |r| r.set("k", "v"); r.smembers("k") }
      end

      describe "hashes" do
        it_matches_redis_rb("HSET with a Hash and with pairs") { |r| [r.hset("h", { "a" => 1, b: 2.5 }), r.hset("h", "a", 10, "c", 3), r.hgetall("h")] }
        it_matches_redis_rb("HSET with an odd number of arguments", raises: Redis::CommandError) { |r| r.hset("h", "a") }
        it_matches_redis_rb("HSETNX") { |r| [r.hsetnx("h", "a", 1), r.hsetnx("h", "a", 2), r.hget("h", "a")] }
        it_matches_redis_rb("HGET and HMGET") { |r| r.hset("h", "a", 1, "b", 2); [r.hget("h", "a"), r.hget("h", "missing"), r.hget("missing", "a"), r.hmget("h", "a", "missing", "b"), r.hmget("h", ["b", "a"])] }
        it_matches_redis_rb("MAPPED_HMGET") { |r| r.hset("h", "a", 1); [r.mapped_hmget("h", "a", "missing"), r.mapped_hmget("missing", "a")] }
        it_matches_redis_rb("HMSET and MAPPED_HMSET") { |r| [r.hmset("h", "a", 1, :b, 2), r.mapped_hmset("h", "c" => 3, d: nil), r.hgetall("h")] }
        it_matches_redis_rb("HGETALL") { |r| r.hset("h", MULTIBYTE, BINARY, "n", 1); [r.hgetall("h"), r.hgetall("missing")] }
        # The Hash is built natively for speed: its keys must still be frozen and interned (the
        # same object as `-key`) as `each_slice(2).to_h` makes them, and its values left unfrozen.
        it_matches_redis_rb("HGETALL keys frozen and interned, values not") do |r|
          r.hset("h", "field", "value")
          r.hgetall("h").map { |key, value| [key.frozen?, key.equal?(-key), value.frozen?] }
        end
        it_matches_redis_rb("HGETALL of a string key", raises: Redis::CommandError) { |r| r.set("s", "x"); r.hgetall("s") }
        it_matches_redis_rb("HDEL and HEXISTS") { |r| r.hset("h", "a", 1, "b", 2, "c", 3); [r.hexists("h", "a"), r.hdel("h", "a"), r.hexists("h", "a"), r.hdel("h", %w[b c missing]), r.exists?("h")] }
        it_matches_redis_rb("HINCRBY and HINCRBYFLOAT") { |r| [r.hincrby("h", "n", 5), r.hincrby("h", "n", -7), r.hincrbyfloat("h", "f", 1.5), r.hincrbyfloat("h", "f", 1e20), r.hincrbyfloat("h", "g", 2)] }
        it_matches_redis_rb("HINCRBY on a non-integer", raises: Redis::CommandError) { |r| r.hset("h", "f", "x"); r.hincrby("h", "f", 1) }
        it_matches_redis_rb("HKEYS, HVALS, HLEN, HSTRLEN") { |r| r.hset("h", "a", "xyz", "b", MULTIBYTE); [r.hkeys("h"), r.hvals("h"), r.hlen("h"), r.hstrlen("h", "b"), r.hstrlen("h", "missing"), r.hkeys("missing")] }
        it_matches_redis_rb("HSCAN_EACH and HSCAN") { |r| r.hset("h", (1..20).to_h { |i| ["f#{i}", i] }); cursor, pairs = r.hscan("h", 0, count: 1000); [r.hscan_each("h").to_a.sort, r.hscan_each("h", match: "f1*").to_a.sort, cursor, pairs.sort] }
        it_matches_redis_rb("HRANDFIELD") { |r| r.hset("h", "only", "v"); [r.hrandfield("h"), r.hrandfield("h", 2), r.hrandfield("h", -2), r.hrandfield("h", 1, with_values: true), r.hrandfield("missing"), r.hrandfield("missing", 1)] }
        it_matches_redis_rb("HRANDFIELD with values but no count", raises: ArgumentError) { |r| r.hrandfield("h", with_values: true) }
      end

      describe "sorted sets" do
        it_matches_redis_rb("ZADD of one member and of pairs") { |r| [r.zadd("z", 1, "a"), r.zadd("z", 2, "a"), r.zadd("z", [[1, "b"], [2.5, "c"], ["3", "d"]]), r.zadd("z", ["10", "e"]), r.zrange("z", 0, -1, with_scores: true)] }
        it_matches_redis_rb("ZADD with NX, XX, CH, GT, LT") do |r|
          r.zadd("z", [[1, "a"], [5, "b"]])
          [r.zadd("z", [[9, "a"], [1, "c"]], nx: true), r.zadd("z", [[9, "a"], [1, "d"]], xx: true), r.zadd("z", [[10, "a"], [10, "b"]], ch: true),
           r.zadd("z", 1, "a", gt: true), r.zadd("z", 1, "a", lt: true, ch: true), r.zrange("z", 0, -1, with_scores: true)]
        end
        it_matches_redis_rb("ZADD with INCR") { |r| [r.zadd("z", 1.5, "a", incr: true), r.zadd("z", 2, "a", incr: true), r.zadd("z", 1, "a", incr: true, nx: true), r.zadd("z", 1, "b", incr: true, xx: true)] }
        it_matches_redis_rb("ZADD with infinite and tiny scores") { |r| r.zadd("z", [["+inf", "hi"], ["-inf", "lo"], [Float::INFINITY, "inf"], [0.1, "tenth"], [1e-300, "tiny"]]); r.zrange("z", 0, -1, with_scores: true) }
        it_matches_redis_rb("ZADD with a NaN score", raises: Redis::CommandError) { |r| r.zadd("z", Float::NAN, "a") }
        it_matches_redis_rb("ZADD with both NX and XX", raises: Redis::CommandError) { |r| r.zadd("z", 1, "a", nx: true, xx: true) }
        it_matches_redis_rb("ZSCORE and ZMSCORE") { |r| r.zadd("z", [[1.25, "a"], [-0.0, "zero"]]); [r.zscore("z", "a"), r.zscore("z", "zero"), r.zscore("z", "missing"), r.zmscore("z", "a", "missing", "zero")] }
        it_matches_redis_rb("ZRANGE by rank, by score, reversed, with a limit") do |r|
          r.zadd("z", [[1, "a"], [2, "b"], [3, "c"], [4, "d"]])
          [r.zrange("z", 0, 1), r.zrange("z", 0, -1, rev: true), r.zrange("z", "(1", "+inf", by_score: true, limit: [0, 2], with_scores: true),
           r.zrange("z", "+inf", 2, by_score: true, rev: true), r.zrange("z", "[a", "(c", by_lex: true), r.zrange("missing", 0, -1, with_scores: true)]
        end
        it_matches_redis_rb("ZREVRANGE") { |r| r.zadd("z", [[1, "a"], [2, "b"]]); [r.zrevrange("z", 0, -1), r.zrevrange("z", 0, 0, with_scores: true), r.zrevrange("z", 0, -1, withscores: true)] }
        it_matches_redis_rb("ZRANGEBYSCORE and ZREVRANGEBYSCORE with a limit") { |r| r.zadd("z", [[1, "a"], [2, "b"], [3, "c"]]); [r.zrangebyscore("z", "-inf", "+inf", limit: [1, 2]), r.zrangebyscore("z", 1, "(3", with_scores: true), r.zrevrangebyscore("z", "+inf", "-inf", limit: [0, 1], with_scores: true)] }
        it_matches_redis_rb("ZRANGEBYLEX and ZLEXCOUNT") { |r| r.zadd("z", [[0, "a"], [0, "b"], [0, "c"]]); [r.zrangebylex("z", "-", "+", limit: [1, 5]), r.zrevrangebylex("z", "[c", "(a"), r.zlexcount("z", "[b", "+")] }
        it_matches_redis_rb("ZRANK and ZREVRANK") { |r| r.zadd("z", [[1, "a"], [2, "b"]]); [r.zrank("z", "a"), r.zrevrank("z", "a"), r.zrank("z", "missing"), r.zrevrank("missing", "a")] }
        it_matches_redis_rb("ZINCRBY") { |r| [r.zincrby("z", 1.5, "a"), r.zincrby("z", -0.5, "a"), r.zincrby("z", 1e20, "b")] }
        it_matches_redis_rb("ZREM, ZCARD, ZCOUNT") { |r| r.zadd("z", [[1, "a"], [2, "b"], [3, "c"], [4, "d"]]); [r.zrem("z", "a"), r.zrem("z", "a"), r.zrem("z", %w[b x]), r.zrem("z", []), r.zcard("z"), r.zcount("z", "-inf", "+inf"), r.zcount("z", "(3", 4), r.zcard("missing")] }
        it_matches_redis_rb("ZREMRANGEBYRANK and ZREMRANGEBYSCORE") { |r| r.zadd("z", [[1, "a"], [2, "b"], [3, "c"], [4, "d"]]); [r.zremrangebyrank("z", 0, 0), r.zremrangebyscore("z", "(2", 3), r.zrange("z", 0, -1)] }
        it_matches_redis_rb("ZPOPMIN and ZPOPMAX") { |r| r.zadd("z", [[1, "a"], [2, "b"], [3, "c"], [4, "d"]]); [r.zpopmin("z"), r.zpopmax("z"), r.zpopmin("z", 5), r.zpopmin("z"), r.zpopmax("z", 2)] }
        it_matches_redis_rb("BZPOPMIN and BZPOPMAX") { |r| r.zadd("z", [[1, "a"], [2, "b"]]); [r.bzpopmin("z", timeout: 1), r.bzpopmax("empty", "z", timeout: 1), r.bzpopmin("z", timeout: 0.1), r.bzpopmax(["empty"], timeout: 0.1)] }
        it_matches_redis_rb("ZUNIONSTORE and ZINTERSTORE with weights and aggregate") do |r|
          r.zadd("a", [[1, "x"], [2, "y"]]); r.zadd("b", [[10, "y"], [20, "z"]])
          [r.zunionstore("u", %w[a b], weights: [2, 3]), r.zrange("u", 0, -1, with_scores: true),
           r.zinterstore("i", %w[a b], aggregate: "max"), r.zrange("i", 0, -1, with_scores: true),
           r.zunionstore("m", %w[a b], weights: [1.5, -1], aggregate: :min), r.zrange("m", 0, -1, with_scores: true)]
        end
        it_matches_redis_rb("ZINTER, ZUNION, ZDIFF with scores") do |r|
          r.zadd("a", [[1, "x"], [2, "y"]]); r.zadd("b", [[10, "y"], [20, "z"]])
          [r.zinter("a", "b"), r.zinter("a", "b", with_scores: true, weights: [2, 1]), r.zunion("a", "b", with_scores: true),
           r.zunion("a", "b", aggregate: "max"), r.zdiff("a", "b"), r.zdiff("a", "b", with_scores: true), r.zdiffstore("d", %w[b a])]
        end
        it_matches_redis_rb("ZRANGESTORE") { |r| r.zadd("src", [[1, "a"], [2, "b"], [3, "c"]]); [r.zrangestore("dst", "src", 0, 1), r.zrangestore("dst2", "src", 2, "+inf", by_score: true), r.zrange("dst", 0, -1, with_scores: true), r.zrange("dst2", 0, -1)] }
        it_matches_redis_rb("ZRANDMEMBER") { |r| r.zadd("z", 1.5, "only"); [r.zrandmember("z"), r.zrandmember("z", -2), r.zrandmember("z", 1, with_scores: true), r.zrandmember("missing")] }
        it_matches_redis_rb("ZSCAN_EACH and ZSCAN") { |r| r.zadd("z", (1..30).map { |i| [i * 1.5, "m#{i}"] }); cursor, pairs = r.zscan("z", 0, count: 1000); [r.zscan_each("z").to_a.sort, r.zscan_each("z", match: "m1*").to_a.sort, cursor, pairs.sort] }
        it_matches_redis_rb("a sorted set command on a set", raises: Redis::CommandError) { |r| r.sadd("s", ["a"]); r.zscore("s", "a") }
      end

      describe "HyperLogLog" do
        it_matches_redis_rb("PFADD, PFCOUNT, PFMERGE") { |r| [r.pfadd("a", "x"), r.pfadd("a", %w[x y z]), r.pfadd("a", "x"), r.pfadd("b", %w[z w]), r.pfcount("a"), r.pfcount("a", "b"), r.pfmerge("c", "a", "b"), r.pfcount("c"), r.pfcount("missing")] }
        it_matches_redis_rb("PFCOUNT on a plain string", raises: Redis::CommandError) { |r| r.set("k", "not a hll"); r.pfcount("k") }
      end

      describe "geo" do
        def add_sicily(r)
          r.geoadd("sicily", 13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania")
        end

        it_matches_redis_rb("GEOADD, GEOPOS, GEODIST, GEOHASH") do |r|
          [add_sicily(r), r.geoadd("sicily", [13.361389, 38.115556, "Palermo"]), r.geopos("sicily", ["Palermo", "missing"]), r.geopos("sicily", "Catania"),
           r.geodist("sicily", "Palermo", "Catania"), r.geodist("sicily", "Palermo", "Catania", "km"), r.geodist("sicily", "Palermo", "missing"),
           r.geohash("sicily", %w[Palermo Catania missing]), r.geohash("sicily", "Palermo")]
        end
        it_matches_redis_rb("GEORADIUS and GEORADIUSBYMEMBER") do |r|
          add_sicily(r)
          [r.georadius("sicily", 15, 37, 200, "km", sort: "asc"), r.georadius("sicily", 15, 37, 200, "km", options: "WITHDIST", sort: "desc", count: 1),
           r.georadius("sicily", 15, 37, 200, "km", options: %w[WITHCOORD WITHDIST WITHHASH]), r.georadiusbymember("sicily", "Palermo", 1, "km")]
        end
        it_matches_redis_rb("GEOADD with an invalid longitude", raises: Redis::CommandError) { |r| r.geoadd("g", 200, 100, "nowhere") }
      end

      describe "streams" do
        def fill_stream(r)
          r.xadd("s", { f: "v1" }, id: "1-0")
          r.xadd("s", { "f" => "v2", "g" => BINARY }, id: "2-0")
          r.xadd("s", { f: 3 }, id: "3-0")
        end

        # Idle times depend on when each side ran.
        def without_times(entries)
          entries.map { |entry| entry.reject { |key, _| %w[idle inactive elapsed].include?(key) } }
        end

        it_matches_redis_rb("XADD and XLEN") { |r| [fill_stream(r), r.xadd("s", { f: 4 }, id: "4-*"), r.xlen("s"), r.xlen("missing"), r.xadd("s", { a: 1 }, id: "5-0", maxlen: 2), r.xlen("s")] }
        it_matches_redis_rb("XADD with an id not above the last one", raises: Redis::CommandError) { |r| fill_stream(r); r.xadd("s", { f: 1 }, id: "1-0") }
        it_matches_redis_rb("XADD with an automatic id returns a String id") { |r| id = r.xadd("s", { f: 1 }); [id.class, id.encoding, id.match?(/\A\d+-\d+\z/)] }
        it_matches_redis_rb("XRANGE and XREVRANGE") { |r| fill_stream(r); [r.xrange("s"), r.xrange("s", "2-0", "+", count: 1), r.xrevrange("s"), r.xrevrange("s", "+", "-", count: 2), r.xrange("missing")] }
        it_matches_redis_rb("XREAD") { |r| fill_stream(r); r.xadd("t", { x: 1 }, id: "1-0"); [r.xread("s", "1-0"), r.xread(%w[s t], %w[0-0 0-0], count: 1), r.xread("s", "3-0"), r.xread("missing", "0-0")] }
        it_matches_redis_rb("XREAD blocking with nothing to read") { |r| fill_stream(r); r.xread("s", "$", block: 100) }
        it_matches_redis_rb("XGROUP CREATE, XREADGROUP, XACK") do |r|
          fill_stream(r)
          [r.xgroup(:create, "s", "g", "0"), r.xgroup(:create, "new", "g", "$", mkstream: true), r.xreadgroup("g", "c", "s", ">", count: 2),
           r.xreadgroup("g", "c", "s", "0"), r.xack("s", "g", "1-0"), r.xack("s", "g", %w[1-0 2-0 9-0]), r.xreadgroup("g", "c", "s", ">", noack: true), r.xreadgroup("g", "c", "s", ">")]
        end
        it_matches_redis_rb("XGROUP CREATE of an existing group", raises: Redis::CommandError) { |r| fill_stream(r); r.xgroup(:create, "s", "g", "0"); r.xgroup(:create, "s", "g", "0") }
        it_matches_redis_rb("XGROUP SETID, CREATECONSUMER, DELCONSUMER, DESTROY") do |r|
          fill_stream(r)
          [r.xgroup(:create, "s", "g", "0"), r.xgroup(:setid, "s", "g", "2-0"), r.xgroup(:createconsumer, "s", "g", "c"),
           r.xgroup(:delconsumer, "s", "g", "c"), r.xgroup(:destroy, "s", "g"), r.xgroup(:destroy, "s", "g")]
        end
        it_matches_redis_rb("XPENDING, summary and detail") do |r|
          fill_stream(r); r.xgroup(:create, "s", "g", "0"); r.xreadgroup("g", "c", "s", ">", count: 2)
          [r.xpending("s", "g"), without_times(r.xpending("s", "g", "-", "+", 10)), without_times(r.xpending("s", "g", "-", "+", 10, "other"))]
        end
        it_matches_redis_rb("XPENDING with no pending entries") { |r| fill_stream(r); r.xgroup(:create, "s", "g", "$"); [r.xpending("s", "g"), r.xpending("s", "g", "-", "+", 10)] }
        it_matches_redis_rb("XINFO STREAM, GROUPS, CONSUMERS") do |r|
          fill_stream(r); r.xgroup(:create, "s", "g", "0"); r.xreadgroup("g", "c", "s", ">", count: 1)
          [r.xinfo(:stream, "s"), r.xinfo(:groups, "s"), without_times(r.xinfo(:consumers, "s", "g"))]
        end
        it_matches_redis_rb("XINFO of a missing stream", raises: Redis::CommandError) { |r| r.xinfo(:stream, "missing") }
        it_matches_redis_rb("XTRIM and XDEL") { |r| fill_stream(r); [r.xdel("s", "2-0"), r.xdel("s", %w[2-0 3-0]), r.xadd("s", { f: 4 }, id: "4-0"), r.xtrim("s", 1), r.xrange("s"), r.xtrim("missing", 0)] }
        it_matches_redis_rb("XCLAIM and XAUTOCLAIM") do |r|
          fill_stream(r); r.xgroup(:create, "s", "g", "0"); r.xreadgroup("g", "c1", "s", ">")
          [r.xclaim("s", "g", "c2", 0, "1-0"), r.xclaim("s", "g", "c2", 0, %w[2-0 9-0], justid: true),
           r.xautoclaim("s", "g", "c3", 0, "0-0", count: 2), r.xautoclaim("s", "g", "c4", 0, "0-0", justid: true), r.xautoclaim("s", "g", "c4", 3_600_000, "0-0")]
        end
      end

      describe "scripting" do
        it_matches_redis_rb("EVAL returning nested replies") { |r| r.eval("return {1, 'two', {3, 'four'}, false, true, 3.99, redis.status_reply('fine')}") }
        it_matches_redis_rb("EVAL with KEYS and ARGV") { |r| r.eval("redis.call('set', KEYS[1], ARGV[1]); return redis.call('get', KEYS[1])", keys: ["k"], argv: [BINARY]) }
        it_matches_redis_rb("EVAL with positional keys and argv") { |r| r.eval("return {KEYS[1], ARGV[1], ARGV[2]}", ["k"], [1.5, nil]) }
        it_matches_redis_rb("EVAL returning nil and an empty table") { |r| [r.eval("return nil"), r.eval("return {}"), r.eval("return 'x'")] }
        it_matches_redis_rb("EVAL returning an error table", raises: Redis::CommandError) { |r| r.eval("return {err='MY custom error'}") }
        it_matches_redis_rb("EVAL hitting WRONGTYPE", raises: Redis::CommandError) { |r| r.set("s", "x"); r.eval("return redis.call('lpush', KEYS[1], 'y')", keys: ["s"]) }
        it_matches_redis_rb("EVAL calling an unknown command", raises: Redis::CommandError) { |r| r.eval("return redis.call('nosuch')") }
        it_matches_redis_rb("EVAL with a Lua syntax error", raises: Redis::CommandError) { |r| r.eval("return (") }
        it_matches_redis_rb("SCRIPT LOAD, SCRIPT EXISTS, EVALSHA") do |r|
          r.script(:flush)
          script = "return redis.call('incrby', KEYS[1], ARGV[1])"
          before = r.script(:exists, Digest::SHA1.hexdigest(script))
          sha = r.script(:load, script)
          [before, sha, r.script(:exists, sha), r.script(:exists, [sha, "0" * 40]), r.evalsha(sha, keys: ["n"], argv: [5]), r.evalsha(sha, ["n"], [2])]
        end
        it_matches_redis_rb("EVALSHA of an unknown script: NOSCRIPT", raises: Redis::CommandError) { |r| r.evalsha("0" * 40) }
        it_matches_redis_rb("SCRIPT with an unknown subcommand", raises: Redis::CommandError) { |r| r.script(:nosuch) }
      end

      describe "server and connection" do
        it_matches_redis_rb("PING and ECHO") { |r| [r.ping, r.ping("hello"), r.echo(BINARY), r.echo(MULTIBYTE), r.echo(""), r.echo(1.5)] }
        it_matches_redis_rb("DBSIZE") { |r| [r.dbsize, r.mset("a", 1, "b", 2), r.dbsize] }
        it_matches_redis_rb("TIME, its shape") { |r| r.time.map(&:class) }
        it_matches_redis_rb("INFO returns a Hash with redis_version") { |r| info = r.info; [info.class, info["redis_version"], info.keys.first.encoding, r.info(:server)["redis_version"], r.info("commandstats").class] }
        it_matches_redis_rb("CONFIG GET") { |r| [r.config(:get, "maxmemory"), r.config("GET", "maxmemory*"), r.config(:get, "no-such-setting")] }
        it_matches_redis_rb("CONFIG SET of an unknown parameter", raises: Redis::CommandError) { |r| r.config(:set, "no-such-setting", "1") }
        it_matches_redis_rb("SELECT then GET") do |r|
          r.set("k", "in the home db")
          selected = r.select(5)
          r.flushdb
          in_other_db = r.get("k")
          r.set("k", "in db 5")
          [selected, in_other_db, r.get("k"), r.dbsize, r.flushdb]
        end
        it_matches_redis_rb("SELECT of a database out of range", raises: Redis::CommandError) { |r| r.select(99) }
        it_matches_redis_rb("FLUSHDB") { |r| r.mset("a", 1, "b", 2); [r.flushdb, r.dbsize, r.flushdb(async: true)] }
        it_matches_redis_rb("CLIENT GETNAME on a fresh connection") { |r| r.client(:getname) }
        it_matches_redis_rb("LASTSAVE, its class") { |r| r.lastsave.class }
        it_matches_redis_rb("COMMAND COUNT via call") { |r| r.call(:command, :count).class }
      end

      describe "raw calls" do
        it_matches_redis_rb("call with an Array") { |r| [r.call([:set, "k", "v"]), r.call([:get, "k"]), r.call(["GET", :k]), r.call(:get, "k")] }
        it_matches_redis_rb("call returns raw replies, untransformed") { |r| r.hset("h", "a", 1); r.zadd("z", 1.5, "m"); [r.call([:hgetall, "h"]), r.call([:zscore, "z", "m"]), r.call([:exists, "h"]), r.call([:sismember, "s", "x"])] }
        it_matches_redis_rb("call with a nested array argument") { |r| r.mset("a", 1, '["a", "b"]', 2); [r.call([:mget, ["a", "b"]]), r.call(:mget, ["a", "b"])] }
        it_matches_redis_rb("call with binary and non-String arguments") { |r| [r.call([:set, BINARY, 1.5]), r.call([:get, BINARY]), r.call([:set, :sym, nil]), r.call([:get, "sym"])] }
        it_matches_redis_rb("call with the wrong arity", raises: Redis::CommandError) { |r| r.call([:get]) }
        it_matches_redis_rb("call with an unknown command", raises: Redis::CommandError) { |r| r.call([:nosuchcommand]) }
        it_matches_redis_rb("call with an unknown command and arguments", raises: Redis::CommandError) { |r| r.call([:nosuchcommand, "a", 1]) }
        it_matches_redis_rb("call with an unknown binary command name", raises: Redis::CommandError) { |r| r.call(["no\xFFcmd".b, "arg"]) }
        it_matches_redis_rb("call with a syntax error", raises: Redis::CommandError) { |r| r.call([:set, "k", "v", "bogus"]) }
        it_matches_redis_rb("an unknown method goes to the server as a command", raises: Redis::CommandError) { |r| r.no_such_command("a") }
      end

      describe "errors" do
        it_matches_redis_rb("WRONGTYPE", raises: Redis::CommandError) { |r| r.set("s", "x"); r.lpush("s", "y") }
        it_matches_redis_rb("WRONGTYPE leaves the connection usable") { |r| r.set("s", "x"); [Outcome.value_or_error { r.hget("s", "f") }, r.get("s")] }
        it_matches_redis_rb("an error message carrying invalid UTF-8", raises: Redis::CommandError) { |r| r.eval("return {err=ARGV[1]}", argv: ["ERR \xFF\xFE".b]) }
        it_matches_redis_rb("an error message carrying invalid UTF-8 in a pipeline", raises: Redis::CommandError) { |r| r.pipelined { |p| p.set("a", "1"); p.eval("return {err=ARGV[1]}", argv: ["ERR \xFF\xFE".b]) } }
        it_matches_redis_rb("an error reply carrying invalid UTF-8 leaves the connection usable") { |r| r.set("k", "v"); [Outcome.value_or_error { r.eval("return {err=ARGV[1]}", argv: ["ERR \xFF".b]) }, r.get("k"), r.ping] }
        it_matches_redis_rb("an error message surrounded by whitespace", raises: Redis::CommandError) { |r| r.eval("return {err='  ERR padded  '}") }
        it_matches_redis_rb("an error message surrounded by whitespace in a pipeline", raises: Redis::CommandError) { |r| r.pipelined { |p| p.eval("return {err='  ERR padded  '}") } }
        it_matches_redis_rb("an error message in a pipeline", raises: Redis::CommandError) { |r| r.pipelined { |p| p.call([:nosuchcommand, "a"]) } }
        it_matches_redis_rb("an error message carrying UTF-8", raises: Redis::CommandError) { |r| r.eval("return {err='ERR ключ 🔑'}") }
        it_matches_redis_rb("an error reply without the ERR prefix", raises: Redis::CommandError) { |r| r.eval("return {err='plain words'}") }
      end

      describe "transactions" do
        it_matches_redis_rb("MULTI with a block") { |r| r.multi { |t| t.set("k", "1"); t.incr("k"); t.get("k"); t.exists?("k"); t.hgetall("missing"); t.zscore("z", "m") } }
        it_matches_redis_rb("MULTI with futures") do |r|
          future = nil
          result = r.multi { |t| t.set("k", "v"); future = t.get("k") }
          [result, future.value, future.class]
        end
        it_matches_redis_rb("MULTI with an empty block") { |r| r.multi { |_t| nil } }
        it_matches_redis_rb("MULTI with a WRONGTYPE reply inside", raises: Redis::CommandError) { |r| r.set("s", "x"); r.multi { |t| t.set("a", "1"); t.lpush("s", "y"); t.set("b", "2") } }
        it_matches_redis_rb("MULTI with a WRONGTYPE reply still runs the rest") do |r|
          r.set("s", "x")
          error = begin
            r.multi { |t| t.set("a", "1"); t.lpush("s", "y"); t.set("b", "2") }
          rescue Redis::CommandError => e
            e
          end
          [error.class, error.message, r.mget("a", "b")]
        end
        it_matches_redis_rb("MULTI with a command rejected while queueing", raises: Redis::CommandError) { |r| r.multi { |t| t.set("a", "1"); t.call([:get]) } }
        it_matches_redis_rb("MULTI without a block, then EXEC") { |r| [r.multi, r.set("k", "v"), r.incr("n"), r.exec, r.get("k")] }
        it_matches_redis_rb("MULTI without a block, then DISCARD") { |r| [r.multi, r.set("k", "v"), r.discard, r.get("k")] }
        it_matches_redis_rb("EXEC without MULTI", raises: Redis::CommandError) { |r| r.exec }
        it_matches_redis_rb("DISCARD without MULTI", raises: Redis::CommandError) { |r| r.discard }
        it_matches_redis_rb("nested MULTI", raises: Redis::CommandError) { |r| r.multi; begin; r.multi; ensure; r.discard; end }
        it_matches_redis_rb("WATCH, MULTI, EXEC succeeding") { |r| r.set("w", "1"); [r.watch("w"), r.multi { |t| t.incr("w") }, r.get("w")] }
        it_matches_redis_rb("WATCH with a block") { |r| r.set("w", "1"); [r.watch("w") { |c| c.multi { |t| t.incr("w") } }, r.get("w")] }
        it_matches_redis_rb("WATCH with a concurrent change: EXEC returns nil") do |r, bystander|
          r.set("w", "1")
          r.watch("w")
          bystander.set("w", "changed")
          [r.multi { |t| t.set("w", "mine") }, r.get("w")]
        end
        it_matches_redis_rb("WATCH with a concurrent change, block-less MULTI") do |r, bystander|
          r.set("w", "1")
          r.watch("w", "other")
          bystander.set("w", "changed")
          [r.multi, r.set("w", "mine"), r.exec, r.get("w")]
        end
        it_matches_redis_rb("UNWATCH then a concurrent change") do |r, bystander|
          r.set("w", "1")
          watched = r.watch("w")
          unwatched = r.unwatch
          bystander.set("w", "changed")
          [watched, unwatched, r.multi { |t| t.set("w", "mine") }, r.get("w")]
        end
        it_matches_redis_rb("WATCH with a block that raises unwatches") do |r, bystander|
          r.set("w", "1")
          error = begin
            r.watch("w") { raise ArgumentError, "boom" }
          rescue ArgumentError => e
            e.message
          end
          bystander.set("w", "changed")
          [error, r.multi { |t| t.set("w", "mine") }, r.get("w")]
        end
      end

      describe "pipelines" do
        it_matches_redis_rb("PIPELINED with futures") do |r|
          futures = nil
          result = r.pipelined do |p|
            p.set("k", "v")
            futures = [p.get("k"), p.incr("n"), p.exists?("k"), p.hgetall("h"), p.zadd("z", 1, "m", incr: true), p.smembers("missing"), p.sadd?("s", "x")]
          end
          [result, futures.map(&:value), futures.map(&:class)]
        end
        it_matches_redis_rb("a future read before the pipeline ran", raises: Redis::FutureNotReady) { |r| r.pipelined { |p| p.get("k").value } }
        it_matches_redis_rb("PIPELINED with an empty block") { |r| r.pipelined { |_p| nil } }
        it_matches_redis_rb("PIPELINED returning transformed values") do |r|
          r.hset("h", "a", 1)
          r.zadd("z", 2, "m")
          *replies, info = r.pipelined do |p|
            p.exists?("h"); p.exists?("nope"); p.hgetall("h"); p.zscore("z", "m"); p.mapped_mget("h", "x"); p.zrange("z", 0, -1, with_scores: true); p.info
          end
          [replies, info.class, info.key?("redis_version")]
        end
        it_matches_redis_rb("a pipeline containing an error reply", raises: Redis::CommandError) { |r| r.set("s", "x"); r.pipelined { |p| p.set("a", "1"); p.incr("s"); p.lpush("s", "y") } }
        it_matches_redis_rb("a pipeline's commands after an error reply still run") do |r|
          r.set("s", "x")
          future = nil
          error = begin
            r.pipelined { |p| p.incr("s"); future = p.set("b", "2") }
          rescue Redis::CommandError => e
            e
          end
          [error.class, error.message, r.get("b"), Outcome.value_or_error { future.value }]
        end
        it_matches_redis_rb("nested pipelines join the outer one") do |r|
          inner = nil
          outer = r.pipelined do |p|
            p.set("a", "1")
            p.pipelined { |q| inner = q.get("a"); q.incr("n") }
            p.get("n")
          end
          [outer, inner.value]
        end
        it_matches_redis_rb("MULTI inside PIPELINED") { |r| r.pipelined { |p| p.set("a", "1"); p.multi { |t| t.incr("a"); t.incr("a") }; p.get("a") } }
        it_matches_redis_rb("PIPELINED inside MULTI") { |r| r.multi { |t| t.set("a", "1"); t.pipelined { |p| p.incr("a") } } }
        it_matches_redis_rb("PIPELINED with blocking commands that do not block") { |r| r.rpush("l", %w[x y]); r.pipelined { |p| p.blpop("l", timeout: 1); p.brpop("l", timeout: 1) } }
        it_matches_redis_rb("the deprecated block-less PIPELINED") { |r| r.pipelined { r.set("a", "1"); r.get("a") } }
        it_matches_redis_rb("the deprecated block-less MULTI") { |r| r.multi { r.set("a", "1"); r.incr("a") } }
        it_matches_redis_rb("a large pipeline") { |r| r.pipelined { |p| 1_000.times { |i| p.set("k#{i}", i); p.get("k#{i}") } } }
        it_matches_redis_rb("SELECT inside PIPELINED") do |r|
          r.set("k", "home")
          result = r.pipelined { |p| p.select(6); p.flushdb; p.set("k", "db 6"); p.get("k") }
          [result, r.get("k")]
        end
      end

      describe "string encodings of replies" do
        it "follow Encoding.default_external, as redis-rb's do" do
          previous = Encoding.default_external
          verbose, $VERBOSE = $VERBOSE, nil
          Encoding.default_external = Encoding::ISO_8859_1
          expected, actual = outcomes do |r|
            r.set("k", "v")
            r.hset("h", "f\xE9".b, "v\xE9".b)
            [r.get("k"), r.ping, r.keys("*"), r.hgetall("k2"), r.hgetall("h"), r.mget("k", "missing")]
          end
          expect(expected.first).to eq(:ok)
          expect(actual).to be_the_same_outcome_as(expected)
        ensure
          Encoding.default_external = previous
          $VERBOSE = verbose
        end
      end

      describe "connection errors" do
        def closed_port
          server = TCPServer.new("127.0.0.1", 0)
          server.addr[1]
        ensure
          server&.close
        end

        def store_outcome(store)
          multi = track(described_class.new(primary_server.url, store, "differential"))
          Outcome.capture { multi.get("x") }
        end

        it "raises redis-rb's CannotConnectError for a closed port" do
          port = closed_port
          expected = Outcome.capture { track(Redis.new(port: port)).get("x") }

          expect(expected[0..2]).to eq([:raised, Redis::CannotConnectError, "Error connecting to Redis on 127.0.0.1:#{port} (Errno::ECONNREFUSED)"])
          expect(store_outcome({ port: port })).to be_the_same_outcome_as(expected)
          expect(store_outcome("redis://127.0.0.1:#{port}")).to be_the_same_outcome_as(expected)
          expect(store_outcome(track(Redis.new(port: port)))).to be_the_same_outcome_as(expected)
        end

        it "raises redis-rb's CannotConnectError for a missing unix socket" do
          path = File.join(Dir.tmpdir, "gitlab-multistore-no-such-#{Process.pid}.sock")
          expected = Outcome.capture { track(Redis.new(path: path)).get("x") }

          expect(expected[0..1]).to eq([:raised, Redis::CannotConnectError])
          expect(store_outcome({ path: path })).to be_the_same_outcome_as(expected)
        end

        it "raises redis-rb's CannotConnectError when the server went away after connecting" do
          server = dedicated_redis_server
          plain = track(server.client)
          multi = track(described_class.new(primary_server.url, server.url, "differential"))
          expect([plain.set("k", "v"), multi.get("k")]).to eq(%w[OK v])

          server.stop
          expected = Outcome.capture { plain.get("k") }
          actual = Outcome.capture { multi.get("k") }

          expect(expected[0..2]).to eq([:raised, Redis::CannotConnectError, "Error connecting to Redis on 127.0.0.1:#{server.port} (Errno::ECONNREFUSED)"])
          expect(actual).to be_the_same_outcome_as(expected)
        end

        it "raises redis-rb's TimeoutError when the server stops answering" do
          server = dedicated_redis_server
          plain = track(server.client(timeout: 0.2, reconnect_attempts: 0))
          multi = track(described_class.new(primary_server.url, { port: server.port, timeout: 0.2, reconnect_attempts: 0 }, "differential"))
          expect([plain.ping, multi.ping]).to eq(%w[PONG PONG])

          Process.kill(:STOP, server.pid)
          expected = Outcome.capture { plain.get("k") }
          actual = Outcome.capture { multi.get("k") }

          expect(expected[0..2]).to eq([:raised, Redis::TimeoutError, "Connection timed out"])
          expect(actual).to be_the_same_outcome_as(expected)
        end
      end
    end
  end
end
