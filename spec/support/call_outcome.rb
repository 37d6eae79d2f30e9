# frozen_string_literal: true

# What a call came to, comparable between redis-rb and the MultiStore: `[:ok, value, shape]` or
# `[:raised, class, message, message encoding]`. The shape spells out, recursively, the class
# of every element and the encoding of every string, since `==` alone equates 1 with 1.0, 0.0
# with -0.0 and a binary string with its UTF-8 twin.
module CallOutcome
  module_function

  def capture
    value = yield
    [:ok, value, shape(value)]
  rescue StandardError => e
    [:raised, e.class, e.message, e.message.encoding]
  end

  def shape(value)
    case value
    when String then "String(#{value.encoding})"
    when Float then "Float(#{value})"
    when Array then value.map { |element| shape(element) }
    when Hash then [:Hash, value.map { |key, element| [shape(key), shape(element)] }]
    else value.class.name
    end
  end

  def same?(actual, expected)
    actual == expected && shape(actual) == shape(expected)
  end

  # A value, or the exception computing it raised: for calls expected to fail mid-example.
  def value_or_error
    yield
  rescue StandardError => e
    [e.class, e.message]
  end

  def brief(outcome, limit: 2_000)
    text = outcome.inspect
    text.length > limit ? "#{text[0, limit]}... (#{text.length} characters)" : text
  end
end
