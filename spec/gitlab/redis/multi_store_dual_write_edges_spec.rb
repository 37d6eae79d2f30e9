# frozen_string_literal: true

# Dual-write in the corners where a write used to be applied twice, to one store only, or to
# another database: one server named two ways, SELECT, the default store flipped between MULTI
# (or WATCH) and EXEC, XREADGROUP without BLOCK, a blocking command sent with `call`. Every
# example looks at what each store holds afterwards.
RSpec.describe Gitlab::Redis::MultiStore, "dual-write edges" do
  let(:flags) { MultiStoreHelpers::FlagSource.new }
  let(:reports) { [] }
  let(:dual_write) { :use_primary_and_secondary_stores_for_edges }
  let(:primary_default) { :use_primary_store_as_default_for_edges }
  let(:primary) { primary_server.client }
  let(:secondary) { secondary_server.client }

  def multi_store(primary_store = primary_server.url, secondary_store = secondary_server.url, **options)
    described_class.new(primary_store, secondary_store, "edges", feature_flags: flags,
                                                                 on_error: ->(e, ctx) { reports << [e, ctx] }, **options)
  end

  DUAL_WRITE_STATES = {
    "dual-write, secondary default" => %i[use_primary_and_secondary_stores_for_edges],
    "dual-write, primary default" => %i[use_primary_and_secondary_stores_for_edges use_primary_store_as_default_for_edges]
  }.freeze

  describe "one server named two ways" do
    DUAL_WRITE_STATES.each do |state, enabled|
      it "applies each write once when the stores are localhost and 127.0.0.1 of one server (#{state})" do
        flags.enable(*enabled)
        store = multi_store("redis://localhost:#{primary_server.port}/0", primary_server.url)

        expect(store.incr("counter")).to eq(1)
        expect(store.lpush("list", "x")).to eq(1)
        expect(store.pipelined { |p| p.incr("counter"); p.rpush("list", "y") }).to eq([2, 2])
        expect(store.multi { |t| t.incr("counter") }).to eq([3])

        expect(primary.get("counter")).to eq("3")
        expect(primary.lrange("list", 0, -1)).to eq(%w[x y])
        expect(store.same_store?).to be(true)
        expect(reports).to be_empty
      end
    end

    it "applies each write once when the stores are the server's unix socket and its TCP port" do
      flags.enable(dual_write)
      store = multi_store("unix://#{primary_server.socket_path}", primary_server.url)

      expect(store.incr("counter")).to eq(1)
      expect(store.blpop("list", timeout: 0.01)).to be_nil
      expect(store.lpush("list", %w[a b])).to eq(2)
      expect(store.blpop("list", timeout: 0.1)).to eq(%w[list b]) # the pop is not mirrored onto itself

      expect(primary.get("counter")).to eq("1")
      expect(primary.lrange("list", 0, -1)).to eq(%w[a])
    end

    it "writes both databases when the two names are one server but different databases" do
      flags.enable(dual_write)
      store = multi_store("redis://localhost:#{primary_server.port}/1", primary_server.url)

      expect(store.incr("counter")).to eq(1)

      expect([primary.get("counter"), primary_server.client(db: 1).get("counter")]).to eq(%w[1 1])
      expect(store.same_store?).to be(false)
    end

    it "writes both stores when they are different servers" do
      flags.enable(dual_write)
      store = multi_store

      expect(store.incr("counter")).to eq(1)

      expect([primary.get("counter"), secondary.get("counter")]).to eq(%w[1 1])
      expect(store.same_store?).to be(false)
    end
  end

  describe "SELECT moves both stores, like redis-rb's one connection" do
    it "lands the dual-written commands after select(1) in database 1 of both stores" do
      flags.enable(dual_write)
      store = multi_store

      expect(store.select(1)).to eq("OK")
      store.set("k", "v")
      store.incr("counter")

      [primary_server, secondary_server].each do |server|
        expect(server.client(db: 1).mget("k", "counter")).to eq(%w[v 1])
        expect(server.client.dbsize).to eq(0)
      end
      expect(store.get("k")).to eq("v")
      expect(store.connection[:db]).to eq(1)
    end

    it "moves the other store too while only the default store is used, so a later dual-write stays in one database" do
      store = multi_store
      store.select(2)
      flags.enable(dual_write)

      store.set("k", "v")

      expect([primary_server.client(db: 2).get("k"), secondary_server.client(db: 2).get("k")]).to eq(%w[v v])
      expect([primary.dbsize, secondary.dbsize]).to eq([0, 0])
    end

    it "follows a SELECT made inside a pipeline on both stores" do
      flags.enable(dual_write)
      store = multi_store

      expect(store.pipelined { |p| p.select(3); p.set("k", "in-pipeline") }).to eq(%w[OK OK])
      store.set("after", "pipeline")

      [primary_server, secondary_server].each do |server|
        expect(server.client(db: 3).mget("k", "after")).to eq(%w[in-pipeline pipeline])
        expect(server.client.dbsize).to eq(0)
      end
    end

    [[], DUAL_WRITE_STATES.values.first].each do |enabled|
      it "raises for a refused select(99) and keeps working on the database it had (#{enabled.empty? ? 'flags off' : 'dual-write'})" do
        flags.enable(*enabled)
        store = multi_store
        secondary.set("k", "old")

        expect { store.select(99) }.to raise_error(Redis::CommandError, /DB index is out of range/)
        expect(store.get("k")).to eq("old")
        expect(store.set("k2", "x")).to eq("OK")

        expect(secondary.get("k2")).to eq("x")
        expect(primary.get("k2")).to eq(enabled.empty? ? nil : "x")
        expect(store.connection[:db]).to eq(0)
      end
    end

    it "reports, without raising, a database the non-default store refuses" do
      flags.enable(dual_write)
      few_databases = dedicated_redis_server("--databases", "2")
      store = multi_store(few_databases.url, secondary_server.url)

      expect(store.select(5)).to eq("OK")

      expect(reports.map { |e, ctx| [e.class, ctx[:command_name]] }).to eq([[Redis::CommandError, "select"]])
    end
  end

  describe "a transaction whose default store flips between MULTI (or WATCH) and EXEC" do
    [[:secondary, :primary], [:primary, :secondary]].each do |from, to|
      context "from the #{from} to the #{to} as the default" do
        before do
          flags.enable(dual_write)
          flags.enable(primary_default) if from == :primary
          [primary, secondary].each { |c| c.set("c", "10") }
        end

        def flip(to)
          to == :primary ? flags.enable(primary_default) : flags.disable(primary_default)
        end

        it "applies a block-less MULTI … EXEC once on each store" do
          store = multi_store
          store.multi
          store.incr("c")
          flip(to)

          expect(store.exec).to eq([11])
          expect([primary.get("c"), secondary.get("c")]).to eq(%w[11 11])
        end

        it "applies a WATCH + multi block once on each store" do
          store = multi_store
          store.watch("c") do
            flip(to)
            expect(store.multi { |t| t.incr("c") }).to eq([11])
          end

          expect([primary.get("c"), secondary.get("c")]).to eq(%w[11 11])
        end
      end
    end

    it "gives the new default store the transaction when dual-write was turned off at the same time" do
      flags.enable(dual_write)
      store = multi_store
      store.multi
      store.set("k", "v")
      flags.enable(primary_default)
      flags.disable(dual_write) # straight to "primary only"

      expect(store.exec).to eq(["OK"])
      expect([primary.get("k"), secondary.get("k")]).to eq(%w[v v])
    end
  end

  describe "XREADGROUP without BLOCK" do
    DUAL_WRITE_STATES.each do |state, enabled|
      it "delivers on both stores, so the consumer group's pending entries agree (#{state})" do
        flags.enable(*enabled)
        store = multi_store
        store.xadd("s", { "f" => "v" }, id: "0-1")
        store.xgroup(:create, "s", "g", "$")
        store.xadd("s", { "f" => "v" }, id: "0-2")
        store.xadd("s", { "f" => "v" }, id: "0-3")

        expect(store.xreadgroup("g", "c1", "s", ">")["s"].map(&:first)).to eq(%w[0-2 0-3])

        expect(primary.xpending("s", "g")).to eq(secondary.xpending("s", "g"))
        expect(primary.xpending("s", "g")["size"]).to eq(2)
        expect(reports).to be_empty
      end
    end

    it "reads without BLOCK with XREAD as any read, falling back to the secondary on a miss" do
      flags.enable(dual_write)
      store = multi_store
      secondary.xadd("s", { "f" => "v" }, id: "0-1")

      expect(store.xread("s", "0")).to eq({ "s" => [["0-1", { "f" => "v" }]] })
    end
  end

  it "mirrors what a blocking command sent with `call` took, like the same command called by name" do
    flags.enable(dual_write)
    store = multi_store
    store.rpush("jobs", %w[a b c])

    expect(store.call(:blpop, "jobs", 1)).to eq(%w[jobs a])

    expect([primary.lrange("jobs", 0, -1), secondary.lrange("jobs", 0, -1)]).to eq([%w[b c], %w[b c]])
  end
end
