# frozen_string_literal: true

module MultistoreFuzz
  # What a server holds, in a form two servers holding the same data agree on: per database and
  # key, the type, the value (sets and hashes sorted, a HyperLogLog by its count, a stream with
  # its consumer groups) and the absolute expiry. Read with plain redis-rb clients, independent
  # of the code under test.
  module Snapshot
    DATABASES = [0, 1].freeze
    EXPIRY_TOLERANCE_MS = 2000

    module_function

    # `clients`: a plain client per database.
    def of(clients)
      DATABASES.to_h { |db| [db, database(clients.fetch(db))] }
    end

    # Three round trips whatever the number of keys: the keys, their types and expiries, their
    # values. A key that changed type in between (the MultiStore's re-sync at work) makes it
    # read again.
    def database(client, attempts = 3)
      read_database(client)
    rescue Redis::CommandError
      attempts -= 1
      raise if attempts.zero?

      sleep 0.01
      retry
    end

    def read_database(client)
      keys = client.keys("*").sort
      return {} if keys.empty?

      meta = client.pipelined do |p|
        keys.each do |key|
          p.type(key)
          p.call(:pexpiretime, key)
        end
      end
      types = meta.each_slice(2).map(&:first)
      raws = client.pipelined { |p| keys.zip(types).each { |key, type| read(p, key, type) } }
      keys.each_with_index.to_h do |key, i|
        [key, [types[i], canonical(client, key, types[i], raws[i]), meta[i * 2 + 1]]]
      end
    end

    def read(pipeline, key, type)
      case type
      when "string" then pipeline.get(key)
      when "list" then pipeline.lrange(key, 0, -1)
      when "set" then pipeline.smembers(key)
      when "zset" then pipeline.zrange(key, 0, -1, with_scores: true)
      when "hash" then pipeline.hgetall(key)
      when "stream" then pipeline.call(:xrange, key, "-", "+")
      else pipeline.type(key)
      end
    end

    # An HLL by its count (PFCOUNT rewrites the cached count in the bytes it reads); a string
    # that only starts like one (SETRANGE over an HLL) by its bytes.
    def hll(client, key, raw)
      [:hll, client.pfcount(key)]
    rescue Redis::CommandError
      raw
    end

    def canonical(client, key, type, raw)
      case type
      when "string" then raw&.start_with?("HYLL") ? hll(client, key, raw) : raw
      when "set", "hash" then raw.sort
      when "stream" then [raw, groups(client, key)]
      else raw
      end
    end

    def groups(client, key)
      client.call(:xinfo, :groups, key).map do |group|
        fields = group.each_slice(2).to_h
        [fields["name"], fields["consumers"], fields["pending"], fields["last-delivered-id"]]
      end.sort
    rescue Redis::CommandError
      :gone
    end

    # The differences between two snapshots, as readable lines (empty when they agree).
    def differences(a, b, a_name, b_name)
      lines = []
      DATABASES.each do |db|
        (a[db].keys | b[db].keys).sort.each do |key|
          left = a[db][key]
          right = b[db][key]
          next if same?(left, right)

          lines << "db#{db} #{key.inspect}: #{a_name} #{left.inspect} / #{b_name} #{right.inspect}"
        end
      end
      lines
    end

    def same?(left, right)
      return left == right if left.nil? || right.nil?

      type_l, value_l, expiry_l = left
      type_r, value_r, expiry_r = right
      return false unless type_l == type_r && value_l == value_r
      return expiry_l == expiry_r if expiry_l.negative? || expiry_r.negative?

      (expiry_l - expiry_r).abs <= EXPIRY_TOLERANCE_MS
    end
  end
end
