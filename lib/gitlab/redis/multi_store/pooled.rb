# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # GitLab's current way to build and use a MultiStore: from two ConnectionPools, used through
      # a pool of MultiStores whose `with` borrows connections around the block.
      #
      # The stores' pools are not where commands go. The MultiStore connects with its own
      # connections (the native core's pools, fork-aware, without the GVL), built from the
      # options of one client it takes from each pool and gives straight back when it is
      # created. So it holds no client of the pools -- nothing leaks from them, and after a fork
      # neither side shares a socket with the other -- and `primary_store` / `secondary_store`
      # are the pools it was given.
      module Pooled
        module ClassMethods
          # @param primary_pool [ConnectionPool] of redis-rb clients of the new store (plain,
          #   Sentinel or Cluster)
          # @param secondary_pool [ConnectionPool] of clients of the store the data lives on today
          # @param options the options of `new`; pool_size defaults to the larger pool's size
          def create_using_pool(primary_pool, secondary_pool, instance_name, **options)
            primary = pooled_client(primary_pool, "primary_pool")
            secondary = pooled_client(secondary_pool, "secondary_pool")
            sizes = [primary_pool, secondary_pool].filter_map { |pool| pool.size if pool.respond_to?(:size) }
            options[:pool_size] ||= sizes.max unless sizes.empty?
            new(primary, secondary, instance_name, **options).tap do |store|
              store.send(:given_pools, primary_pool, secondary_pool)
            end
          end

          # GitLab's name for `new` with two clients.
          def create_using_client(primary_store, secondary_store, instance_name, **options)
            new(primary_store, secondary_store, instance_name, **options)
          end

          private

          def pooled_client(pool, name)
            raise ArgumentError, "#{name} must be a ConnectionPool (something with #with), got #{pool.class}" unless pool.respond_to?(:with)

            client = pool.with { |redis| redis }
            raise ArgumentError, "invalid #{name}: its connections are #{client.class}, not Redis clients" unless StoreOptions.valid?(client)

            client
          end
        end

        def self.included(base)
          base.extend(ClassMethods)
        end

        attr_reader :primary_pool, :secondary_pool

        # For the block, every command this thread sends uses one connection of each store, as a
        # redis-rb client the thread had to itself would: connection-scoped state (CLIENT
        # SETNAME, CLIENT TRACKING, a WATCH) stays with the thread's commands. What GitLab's
        # pooled MultiStore does by checking a client out of each pool. Blocks nest; the
        # connections go back when the outermost one ends, exception or not. A Redis Cluster store
        # keeps no connection for the thread (its commands go to whichever node owns their keys).
        def with_borrowed_connection
          @native._borrow_connections
          begin
            yield self
          ensure
            @native._give_back_connections
          end
        end

        private

        def given_pools(primary_pool, secondary_pool)
          @primary_pool = primary_pool
          @secondary_pool = secondary_pool
          @primary_store = primary_pool
          @secondary_store = secondary_pool
        end
      end
    end
  end
end
