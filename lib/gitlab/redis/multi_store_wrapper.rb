# frozen_string_literal: true

require "gitlab/redis/wrapper"
require "gitlab/redis/multi_store_connection_pool"

module Gitlab
  module Redis
    # GitLab's current base class for an instance being migrated: `.with` / `.then` hand out
    # MultiStores from a pool of them, each used by one thread at a time with its connections
    # borrowed for the block. A subclass says how to build one:
    #
    #   class Foo < Gitlab::Redis::MultiStoreWrapper
    #     def self.config_fallback = SharedState
    #     def self.multistore = MultiStore.create_using_pool(pool, config_fallback.pool, store_name)
    #   end
    #
    #   Foo.with { |redis| redis.set("k", "v") }
    #
    # `pool` stays Wrapper's pool of plain clients of Foo's own configuration (the new store).
    class MultiStoreWrapper < Wrapper
      class << self
        def with(&block)
          multistore_pool.with(&block)
        end
        alias then with

        # Sized like `pool`, so each thread that may run at once gets a MultiStore.
        def multistore_pool
          @multistore_pool || Wrapper::POOL_LOCK.synchronize do
            @multistore_pool ||= MultiStoreConnectionPool.new(size: pool_size, name: pool_name) { multistore }
          end
        end

        # "FooMultiStore".underscore, as GitLab names it: foo_multi_store.
        def pool_name
          MultiStore::FeatureFlags.underscore("#{store_name}MultiStore")
        end

        def multistore
          raise NotImplementedError, "#{name || 'this MultiStoreWrapper'} must define .multistore, e.g. " \
                                     "MultiStore.create_using_pool(pool, config_fallback.pool, store_name)"
        end

        # Also closes the pooled MultiStores (those in use as they are returned).
        def reset_pool!
          multistores = Wrapper::POOL_LOCK.synchronize do
            current = @multistore_pool
            @multistore_pool = nil
            current
          end
          multistores&.shutdown(&:close)
          super
        end
      end
    end
  end
end
