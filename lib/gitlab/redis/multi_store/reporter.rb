# frozen_string_literal: true

require "logger"

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Turns what the native core saw on the side of a call into an exception and hands it to
      # the application's `on_error.call(exception, context)` (default: a warning in
      # `MultiStore.logger`). The context names the instance, the command and the store, never
      # argument values: they may hold secrets or personal data. A reporter that raises is
      # logged and otherwise ignored: reporting must never fail the caller's command.
      class Reporter
        def initialize(instance_name, on_error)
          @instance_name = instance_name
          @on_error = on_error
        end

        # One row per event: [kind, command_name, store, exception] -- the exception of a failure
        # built by the native error map, nil for the kinds named here.
        def call(events)
          events.each do |kind, command_name, store, error|
            exception = error || build(kind, command_name)
            context = { instance_name: @instance_name, command_name: command_name, store: store }
            context[:message] = "Failed to read from primary store" if kind == :read_from_primary_failed
            context[:message] = "Failed to write to #{store} store" if kind == :non_default_failed
            deliver(exception, context.compact)
          end
          nil
        end

        def self.log(exception, context)
          details = context.map { |key, value| "#{key}=#{value}" }.join(" ")
          MultiStore.logger.warn("gitlab_multistore: #{exception.class}: #{exception.message} (#{details})")
        end

        private

        def build(kind, command_name)
          case kind
          when :read_fallback
            ReadFromPrimaryError.new("Value not found on the primary store. Read from the secondary store successful.")
          when :method_missing
            MethodMissingError.new("Command #{command_name} is not in the command table: sent to the default store only")
          when :pipelined_diff
            PipelinedDiffError.new("Pipeline executed on both stores, but their results differ")
          else
            ::Redis::BaseError.new("#{kind} on #{command_name}")
          end
        end

        def deliver(exception, context)
          (@on_error || MultiStore.on_error || self.class.method(:log)).call(exception, context)
        rescue StandardError => e
          MultiStore.logger.error("gitlab_multistore: the on_error reporter raised #{e.class}: #{e.message}")
        end
      end
    end
  end
end
