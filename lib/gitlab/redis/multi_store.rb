# frozen_string_literal: true

require "logger"
require "redis"
require "gitlab_multistore/gitlab_multistore"
require "gitlab/redis/multi_store/errors"
require "gitlab/redis/multi_store/store_options"
require "gitlab/redis/multi_store/feature_flags"
require "gitlab/redis/multi_store/reporter"
require "gitlab/redis/multi_store/native_events"
require "gitlab/redis/multi_store/client"
require "gitlab/redis/multi_store/checkpoint"
require "gitlab/redis/multi_store/migration"
require "gitlab/redis/multi_store/pooled"

module Gitlab
  module Redis
    # A `Redis` that moves one functional partition of data from an old store (the secondary)
    # to a new one (the primary). It is a real `::Redis`: redis-rb's own command modules give
    # every method, argument conversion and reply transformation, so results match redis-rb by
    # construction. The transport and the routing run in the native core, without the GVL.
    class MultiStore < ::Redis
      include Migration
      include Pooled

      READ_STRATEGIES = %i[primary_with_fallback default_only].freeze
      LOG_LEVELS = { debug: Logger::DEBUG, info: Logger::INFO, warn: Logger::WARN, error: Logger::ERROR }.freeze

      class << self
        # Process-wide defaults; each can be overridden per instance.
        # feature_flags: responds to `call(flag)` or `enabled?(flag)`; nil means every flag off.
        # on_error: `call(exception, context)`; nil logs a warning to `logger`.
        # strict: raise MethodMissingError for commands not in the command table (GitLab raises
        #   in development and test) instead of reporting them.
        attr_accessor :feature_flags, :on_error, :strict
        attr_writer :logger
        attr_reader :on_metric, :log_level

        def logger
          @logger ||= Logger.new($stderr, progname: "gitlab_multistore")
        end

        # Receives every metric increment and observation of the native core, for an
        # application that exports metrics with its own client (GitLab's prometheus-client-mmap):
        # `call(name, labels, value)`; name is a Symbol, labels a Hash, value a Float (1.0 for a
        # counter increment, seconds for a duration). nil turns it off (the default).
        def on_metric=(callable)
          @on_metric = callable
          GitlabMultistore::NativeStore.metrics_hook = !callable.nil?
        end

        # The lowest level of the native core's log lines written to `logger`: :debug, :info,
        # :warn (default) or :error.
        def log_level=(level)
          severity = LOG_LEVELS.fetch(level.is_a?(Integer) ? LOG_LEVELS.key(level) : level.to_sym) do
            raise ArgumentError, "log_level must be one of #{LOG_LEVELS.keys.inspect}"
          end
          @log_level = LOG_LEVELS.key(severity)
          GitlabMultistore::NativeStore.log_level = severity
        end

        # Writes the native core's queued log lines now, instead of after the next call (lines
        # logged by background tasks wait for a Ruby thread to write them).
        def flush_logs
          GitlabMultistore::NativeStore.flush_logs
        end

        # Per-request metrics (requests_total, duration_seconds) can be turned off; the GitLab
        # counters (fallbacks, method missing, pipeline diffs, write failures) always count.
        def request_metrics=(enabled)
          GitlabMultistore::NativeStore.request_metrics = enabled ? true : false
        end

        # The MultiStores of one partition (instance name and stores) in a process share what they
        # learn: keys a store missed, breakers, restarts, dual-write gaps. This forgets it all --
        # after both stores were wiped (FLUSHALL), or between the examples of a test suite that
        # reuses its stores.
        def forget_partitions!
          GitlabMultistore::NativeStore.forget_partitions
        end

        # Prometheus text exposition (0.0.4) of every MultiStore's metrics in this process.
        def metrics_text
          GitlabMultistore::NativeStore.metrics_text
        end
      end
      self.strict = false

      attr_reader :primary_store, :secondary_store, :instance_name, :read_strategy

      # @param primary_store [::Redis, String, Hash] the new store: a client, URL or options
      # @param secondary_store [::Redis, String, Hash] the store the data lives on today
      # @param instance_name [String] names the partition in flags, logs and metrics
      # @param feature_flags [#call, #enabled?] this instance's flag source (default: global)
      # @param on_error [#call] this instance's reporter (default: global, else the logger)
      # @param read_strategy [Symbol] with dual-write on, :primary_with_fallback reads the
      #   primary and falls back to the secondary on a miss or an error (GitLab's original
      #   behaviour); :default_only reads the default store only (GitLab's later behaviour)
      # @param strict [Boolean] raise for commands not in the command table
      # @param pool_size [Integer] idle connections kept per store (default 16)
      # @param spin_wait [Numeric] seconds a connection may poll for a reply before sleeping on
      #   it, adaptively (default 0.00005; 0 never polls)
      # @param breaker_threshold [Integer] failures in a row after which the non-default store is
      #   skipped for a cool-down (default 3)
      # @param breaker_cool_down [Numeric] seconds the non-default store is skipped (default 5)
      # @param journal_capacity [Integer] keys the re-sync journal holds at most (default 100,000)
      # @param flag_cache_seconds [Numeric] reuse flag values for this long (default 0: ask the
      #   flag source on every call)
      def initialize(primary_store, secondary_store, instance_name, feature_flags: nil, on_error: nil,
                     read_strategy: :primary_with_fallback, strict: nil, pool_size: nil, spin_wait: nil,
                     breaker_threshold: nil, breaker_cool_down: nil, journal_capacity: nil,
                     flag_cache_seconds: 0)
        validate_arguments!(primary_store, secondary_store, instance_name)
        unless READ_STRATEGIES.include?(read_strategy)
          raise ArgumentError, "invalid read_strategy #{read_strategy.inspect} (one of #{READ_STRATEGIES.inspect})"
        end

        @primary_store = primary_store
        @secondary_store = secondary_store
        @instance_name = instance_name.to_s
        @read_strategy = read_strategy
        tuning = { breaker_threshold: breaker_threshold, breaker_cool_down: breaker_cool_down,
                   journal_capacity: journal_capacity }.compact
        @constructor_options = { feature_flags: feature_flags, on_error: on_error, read_strategy: read_strategy,
                                 strict: strict, pool_size: pool_size, spin_wait: spin_wait,
                                 flag_cache_seconds: flag_cache_seconds,
                                 **tuning }
        @flags = FeatureFlags.new(@instance_name, callable: feature_flags, strict: strict,
                                                  cache_seconds: flag_cache_seconds)
        @primary_options = StoreOptions.normalize(primary_store, pool_size: pool_size, spin_wait: spin_wait)
        @secondary_options = StoreOptions.normalize(secondary_store, pool_size: pool_size, spin_wait: spin_wait)
        StoreOptions.check_namespaces!(@primary_options, @secondary_options)
        @native = GitlabMultistore::NativeStore.new(
          @instance_name,
          @primary_options,
          @secondary_options,
          read_strategy,
          Reporter.new(@instance_name, on_error),
          tuning
        )
        @original_client = @client = Client.new(@native, @flags)
        # Only redis-rb's deprecated `queue`/`commit` still use these.
        @queue = Hash.new { |h, k| h[k] = [] }
        @monitor = Monitor.new
      end

      def use_primary_and_secondary_stores?
        @flags.dual_write?
      end

      def use_primary_store_as_default?
        @flags.primary_default?
      end

      def default_store
        use_primary_store_as_default? ? primary_store : secondary_store
      end

      def non_default_store
        use_primary_store_as_default? ? secondary_store : primary_store
      end

      # Both stores point at the same server and db: writes are then applied once.
      def same_store?
        @native._same_store?(@flags.bits)
      end

      # Pipelines inside the block only read: with dual-write on they follow the read strategy
      # instead of being sent to both stores. Per thread; blocks do not nest.
      def with_readonly_pipeline
        state = @client.thread_state!
        raise NestedReadonlyPipelineError, "with_readonly_pipeline blocks do not nest" if state.readonly

        state.readonly = true
        begin
          yield
        ensure
          state.readonly = false
        end
      end

      def readonly_pipeline?
        @client.thread_state&.readonly ? true : false
      end

      def pipelined(&block)
        record(::Redis::Pipeline.new(@client), "pipelined", block)
      end

      def multi(&block)
        return record(::Redis::Pipeline::Multi.new(@client), "multi", block) if block

        # MULTI without a block queues the following calls on this thread's connection; they
        # are recorded too, to replay the transaction on the other store after EXEC.
        @client.pin
        reply = send_command([:multi])
        @client.thread_state!.queued = []
        reply
      end

      def exec
        state = @client.thread_state
        queued = state&.queued
        session = state&.session
        reply = super
        if queued && session && !reply.nil?
          @client.mirror([[:multi], *queued, [:exec]], session)
          # A SELECT queued in the transaction moved the pinned connection at EXEC: both stores
          # follow, as redis-rb's one connection does.
          at = queued.rindex { |command| command.first.to_s.casecmp?("select") }
          @client.db = queued[at][1] if at && reply[at] == "OK"
        end
        reply
      ensure
        state.queued = nil if state
        @client.end_pinned_writes
        @client.unpin
      end

      def discard
        super
      ensure
        @client.thread_state&.queued = nil
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

      # Both stores move to the database (redis-rb's one connection has one database): the
      # dual-written commands that follow land in the same database on each. A refused index
      # raises and changes nothing.
      def select(db)
        @client.select(db)
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
        return self.class.create_using_pool(primary_pool, secondary_pool, instance_name, **@constructor_options) if primary_pool

        self.class.new(primary_store, secondary_store, instance_name, **@constructor_options)
      end

      # Names both stores and the default one, never a password.
      def inspect
        "#<#{self.class.name} instance_name=#{instance_name.inspect} " \
          "primary=#{@native._store_id(:primary)} secondary=#{@native._store_id(:secondary)} " \
          "default=#{@client.default_role}>"
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
        use_primary_store_as_default? ? @primary_options : @secondary_options
      end

      # Commands sent while a block-less (deprecated) pipelined/multi block runs on this thread
      # are recorded into it, as redis-rb does by swapping its client -- but per thread, so other
      # threads sharing this instance are not captured.
      def send_command(command, &block)
        state = @client.thread_state
        return state.recorder.call(command, &block) if state&.recorder

        # The state is handed on so the hot path looks the thread-local up once.
        @client.call(command, state, &block)
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
