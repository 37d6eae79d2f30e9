# frozen_string_literal: true

require "gitlab_multistore/local_redis_server"

module GitlabMultistore
  # `gitlab-multistore demo` / `rake demo`: starts two throw-away redis-servers (the old store
  # and the new one), puts a MultiStore in front of them and uses it the way a Rails app uses a
  # `Redis`: strings with TTLs, hashes, sets, pipelines, transactions, and many threads at once.
  # The servers are stopped when the demo ends, Ctrl-C included.
  class Demo
    THREADS = 8
    OPS_PER_THREAD = 2_000

    def initialize(out, threads: THREADS, ops_per_thread: OPS_PER_THREAD)
      @out = out
      @threads = threads
      @ops_per_thread = ops_per_thread
    end

    def run
      servers = []
      servers << (old_store = LocalRedisServer.new)
      servers << (new_store = LocalRedisServer.new)
      say "Started the old store (secondary) on #{old_store.url} and the new store (primary) on #{new_store.url}"

      redis = Gitlab::Redis::MultiStore.new(new_store.url, old_store.url, "demo_sessions")
      say "MultiStore: #{redis.inspect}"
      say "It is a Redis: redis.is_a?(Redis) => #{redis.is_a?(::Redis)}"

      show_commands(redis)
      errors = run_threads(redis)
      summarize(redis, old_store, new_store, errors)
    rescue LocalRedisServer::MissingBinary => e
      say "Cannot run the demo: #{e.message}"
      false
    ensure
      servers&.each(&:cleanup)
    end

    private

    def show_commands(redis)
      say ""
      say "Commands, answered exactly as redis-rb answers them:"
      show("redis.set('session:1', 'alice', ex: 3600)") { redis.set("session:1", "alice", ex: 3600) }
      show("redis.get('session:1')") { redis.get("session:1") }
      show("redis.ttl('session:1')") { redis.ttl("session:1") }
      show("redis.mapped_hmset('user:1', name: 'Alice', visits: 1)") { redis.mapped_hmset("user:1", name: "Alice", visits: 1) }
      show("redis.hincrby('user:1', 'visits', 5)") { redis.hincrby("user:1", "visits", 5) }
      show("redis.hgetall('user:1')") { redis.hgetall("user:1") }
      show("redis.sadd?('online', 'alice')") { redis.sadd?("online", "alice") }
      show("redis.pipelined { |p| p.incr('hits'); p.expire('hits', 60) }") do
        redis.pipelined { |p| p.incr("hits"); p.expire("hits", 60) }
      end
      show("redis.multi { |tx| tx.lpush('jobs', 'a'); tx.llen('jobs') }") do
        redis.multi { |tx| tx.lpush("jobs", "a"); tx.llen("jobs") }
      end
      show("redis.lpush('session:1', 'x')  # wrong type") do
        redis.lpush("session:1", "x")
      rescue ::Redis::CommandError => e
        "raises #{e.class}: #{e.message}"
      end
    end

    def show(code)
      @out.puts format("  %-62s => %s", code, yield.inspect)
    end

    def run_threads(redis)
      say ""
      say "#{@threads} threads x #{@ops_per_thread} commands (SET with a TTL, then GET it back twice) on one shared instance..."
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      errors = Queue.new
      workers = Array.new(@threads) do |t|
        Thread.new do
          (@ops_per_thread / 2).times do |i|
            key = "rate:#{t}:#{i % 50}"
            redis.set(key, i, ex: 600)
            errors << "#{key}: #{redis.get(key).inspect}" unless redis.get(key) == i.to_s
          rescue StandardError => e
            errors << "#{e.class}: #{e.message}"
          end
        end
      end
      workers.each(&:join)
      elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      ops = @threads * (@ops_per_thread / 2) * 3
      say format("  %d commands in %.2f s: %d ops/s, %d errors", ops, elapsed, ops / elapsed, errors.size)
      Array.new(errors.size) { errors.pop }
    end

    def summarize(redis, old_store, new_store, errors)
      old_keys = old_store.client.dbsize
      new_keys = new_store.client.dbsize
      say ""
      say "Summary"
      say "  keys on the old store (secondary, the default while no flag is on): #{old_keys}"
      say "  keys on the new store (primary): #{new_keys}"
      say "  errors seen by callers: #{errors.size}"
      errors.first(5).each { |e| say "    #{e}" }
      redis.close
      errors.empty? && new_keys.zero? && old_keys.positive?
    end

    def say(line)
      @out.puts(line)
    end
  end
end
