# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Turns each accepted form of a store -- a `::Redis`, a URL, or a Hash of redis-rb options
      # -- into the options the native core connects with. redis-rb's own option parser does the
      # work, so URLs, defaults (`REDIS_URL`, port 6379, timeout 5.0) and `timeout:` expansion
      # behave exactly as `Redis.new` would.
      module StoreOptions
        PASSED_TO_CORE = %i[
          host port path db username password id ssl
          connect_timeout read_timeout write_timeout reconnect_attempts
          sentinels role
        ].freeze

        module_function

        def valid?(store)
          store.is_a?(::Redis) || store.is_a?(String) || store.is_a?(Hash)
        end

        def normalize(store, pool_size: nil)
          options = parsed_options(store)
          raise ArgumentError, "TLS stores (rediss://, ssl: true) are not supported by gitlab_multistore yet" if options[:ssl]

          normalized = options.slice(*PASSED_TO_CORE)
          # redis-rb names the role with a Symbol; the master's name travels in :host.
          normalized[:role] = normalized[:role].to_s if normalized[:role]
          normalized[:pool_size] = Integer(pool_size) if pool_size
          normalized
        end

        def parsed_options(store)
          case store
          when ::Redis
            raise ArgumentError, "Redis Cluster stores are not supported by gitlab_multistore yet" if store._client.is_a?(::Redis::Cluster)

            store._client.options
          when String then ::Redis::Client.new(url: store).options
          when Hash then ::Redis::Client.new(store).options
          end
        end
      end
    end
  end
end
