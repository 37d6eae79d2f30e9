# frozen_string_literal: true

# Flags, reports and metrics as the MultiStore specs observe them.
module MultiStoreHelpers
  # A feature-flag source the examples flip, as an application's Feature.enabled? would be.
  class FlagSource
    def initialize
      @enabled = {}
    end

    def enable(*flags)
      flags.each { |flag| @enabled[flag] = true }
    end

    def disable(*flags)
      flags.each { |flag| @enabled.delete(flag) }
    end

    # Exactly these flags on, at once: a step of the runbook, with no moment in between where
    # a flag that stays on was off.
    def set(*flags)
      @enabled = flags.to_h { |flag| [flag, true] }
    end

    def call(flag)
      @enabled.fetch(flag, false)
    end
  end

  # A key's type and value as a plain client sees them, comparable across servers (unlike DUMP,
  # whose bytes depend on each server's hash seed for sets and hashes).
  def contents(redis, key)
    type = redis.type(key)
    value =
      case type
      # A HyperLogLog by its count: PFCOUNT rewrites the cached count in the bytes it read.
      when "string" then redis.get(key).then { |v| v&.start_with?("HYLL") ? [:hll, redis.pfcount(key)] : v }
      when "list" then redis.lrange(key, 0, -1)
      when "set" then redis.smembers(key).sort
      when "zset" then redis.zrange(key, 0, -1, with_scores: true)
      when "hash" then redis.hgetall(key)
      when "stream" then redis.xrange(key)
      end
    [type, value]
  end

  # Reads one sample from MultiStore.metrics_text (0 when the series does not exist yet).
  # The sum over the series of `name` whose labels include `labels` (a counter labelled by
  # command as well is summed over the commands).
  def metric_value(name, **labels)
    Gitlab::Redis::MultiStore.metrics_text.each_line.sum(0.0) do |line|
      next 0.0 unless line.start_with?("#{name}{")

      series, value = line.rpartition(" ").values_at(0, 2)
      labels.all? { |key, expected| series.include?(%(#{key}="#{expected}")) } ? Float(value) : 0.0
    end
  end

  # How much a block changes a metric sample.
  def metric_delta(name, **labels)
    before = metric_value(name, **labels)
    yield
    metric_value(name, **labels) - before
  end
end
