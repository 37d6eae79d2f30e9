# frozen_string_literal: true

# The baseline: a dual-write store built the way GitLab's Ruby MultiStore works -- two redis-rb
# clients, each write sent to the primary and then to the secondary, one after the other; reads
# from the primary, falling back to the secondary on nil. Only what the benchmark calls.
class SequentialMultiStore
  def initialize(primary, secondary)
    @primary = primary
    @secondary = secondary
  end

  def set(*args, **kwargs)
    write(:set, *args, **kwargs)
  end

  def get(key)
    @primary.get(key) || @secondary.get(key)
  end

  def mget(*keys)
    values = @primary.mget(*keys)
    values.all?(&:nil?) ? @secondary.mget(*keys) : values
  end

  def hgetall(key)
    value = @primary.hgetall(key)
    value.empty? ? @secondary.hgetall(key) : value
  end

  def pipelined(&block)
    begin
      @primary.pipelined(&block)
    rescue StandardError
      nil
    end
    @secondary.pipelined(&block)
  end

  private

  def write(command, *args, **kwargs)
    begin
      @primary.public_send(command, *args, **kwargs)
    rescue StandardError
      nil
    end
    @secondary.public_send(command, *args, **kwargs)
  end
end
