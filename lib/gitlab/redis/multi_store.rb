# frozen_string_literal: true

require "gitlab/redis/multi_store/errors"
require "gitlab/redis/multi_store/store_options"
require "gitlab/redis/multi_store/client"

module Gitlab
  module Redis
    # A `Redis` that moves one functional partition of data from an old store (the secondary)
    # to a new one (the primary). It is a real `::Redis`: redis-rb's own command modules give
    # every method, argument conversion and reply transformation, so results match redis-rb by
    # construction. The transport and the routing run in the native core, without the GVL.
    class MultiStore < ::Redis
      attr_reader :primary_store, :secondary_store, :instance_name

      # @param primary_store [::Redis, String, Hash] the new store: a client, URL or options
      # @param secondary_store [::Redis, String, Hash] the store the data lives on today
      # @param instance_name [String] names the partition in flags, logs and metrics
      # @param pool_size [Integer] idle connections kept per store (default 16)
      def initialize(primary_store, secondary_store, instance_name, pool_size: nil)
        validate_arguments!(primary_store, secondary_store, instance_name)

        @primary_store = primary_store
        @secondary_store = secondary_store
        @instance_name = instance_name.to_s
        @pool_size = pool_size
        @native = GitlabMultistore::NativeStore.new(
          @instance_name,
          StoreOptions.normalize(primary_store, pool_size: pool_size),
          StoreOptions.normalize(secondary_store, pool_size: pool_size)
        )
        @original_client = @client = Client.new(@native)
        # Only redis-rb's deprecated `queue`/`commit` still use these.
        @queue = Hash.new { |h, k| h[k] = [] }
        @monitor = Monitor.new
      end

      def pipelined(&block)
        record(::Redis::Pipeline.new(@client), "pipelined", block)
      end

      def multi(&block)
        return record(::Redis::Pipeline::Multi.new(@client), "multi", block) if block

        # MULTI without a block queues the following calls on this thread's connection.
        @client.pin
        send_command([:multi])
      end

      def exec
        super
      ensure
        @client.unpin
      end

      def discard
        super
      ensure
        @client.unpin
      end

      # WATCH pins this thread's connection until EXEC, DISCARD or UNWATCH (or the end of the
      # block), since the watch lives on that connection only.
      def watch(*keys)
        @client.pin
        reply = @client.call([:watch, *keys])
        return reply unless block_given?

        begin
          yield(self)
        rescue ::Redis::ConnectionError
          raise
        rescue StandardError
          unwatch
          raise
        ensure
          @client.unpin
        end
      end

      def unwatch
        super
      ensure
        @client.unpin
      end

      def subscribed?
        !@client.thread_state&.subscribed_client.nil?
      end

      def shutdown
        super
      rescue ::Redis::BaseConnectionError
        # The server went away as asked.
        nil
      end

      def connected?
        @client.connected?
      end

      def close
        @client.disconnect
      end
      alias disconnect! close

      def with_reconnect(value = true)
        @client.with_reconnect(value) { yield }
      end

      def without_reconnect(&block)
        with_reconnect(false, &block)
      end

      def id
        @client.id
      end

      def connection
        {
          host: default_connection_options[:host],
          port: default_connection_options[:port],
          db: @client.db,
          id: id,
          location: default_connection_options[:path] || "#{default_connection_options[:host]}:#{default_connection_options[:port]}"
        }
      end

      def dup
        self.class.new(primary_store, secondary_store, instance_name, pool_size: @pool_size)
      end

      # Names both stores, never a password.
      def inspect
        "#<#{self.class.name} instance_name=#{instance_name.inspect} " \
          "primary=#{@native._primary_id} secondary=#{@native._secondary_id} default=#{@native._default_id}>"
      end
      alias to_s inspect

      private

      def validate_arguments!(primary_store, secondary_store, instance_name)
        raise ArgumentError, "primary_store is required" unless primary_store
        raise ArgumentError, "secondary_store is required" unless secondary_store
        raise ArgumentError, "instance_name is required" if instance_name.nil? || instance_name.to_s.empty?
        raise ArgumentError, "invalid primary_store" unless StoreOptions.valid?(primary_store)
        raise ArgumentError, "invalid secondary_store" unless StoreOptions.valid?(secondary_store)
      end

      def default_connection_options
        @default_connection_options ||= StoreOptions.parsed_options(secondary_store)
      end

      # Commands sent while a block-less (deprecated) pipelined/multi block runs on this thread
      # are recorded into it, as redis-rb does by swapping its client -- but per thread, so other
      # threads sharing this instance are not captured.
      def send_command(command, &block)
        recorder = @client.thread_state&.recorder
        return recorder.call(command, &block) if recorder

        @client.call(command, &block)
      end

      def send_blocking_command(command, timeout, &block)
        recorder = @client.thread_state&.recorder
        return recorder.call_with_timeout(command, timeout, &block) if recorder

        @client.call_with_timeout(command, timeout, &block)
      end

      # The native core is thread-safe, so unlike redis-rb no monitor serialises the threads.
      def synchronize
        yield(@client.thread_state&.subscribed_client || @client)
      end

      # Runs a pipelined/multi block once, recording its commands, then sends them. While the
      # block runs, commands called on this object itself are recorded too (redis-rb 4.8 does so,
      # with a deprecation warning, by swapping its client -- here per thread, so other threads
      # sharing the instance are not captured). Nested blocks join the outer pipeline.
      def record(pipeline, method, block)
        state = @client.thread_state!
        outer = state.recorder
        ::Redis::Pipeline.deprecation_warning(method, Kernel.caller_locations(2, 5)) if block.arity.zero? && !outer
        state.recorder = pipeline
        begin
          block.arity.zero? ? block.call : block.call(::Redis::PipelinedConnection.new(pipeline))
        ensure
          state.recorder = outer
        end
        outer ? outer.call_pipeline(pipeline) : @client.call_pipeline(pipeline)
      end

      def _subscription(method, timeout, channels, block)
        state = @client.thread_state!
        return state.subscribed_client.call([method] + channels) if state.subscribed_client

        begin
          state.subscribed_client = ::Redis::SubscribedClient.new(@client)
          if timeout > 0
            state.subscribed_client.send(method, timeout, *channels, &block)
          else
            state.subscribed_client.send(method, *channels, &block)
          end
        ensure
          state.subscribed_client = nil
        end
      end
    end
  end
end
