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
          normalized = options.slice(*PASSED_TO_CORE)
          # redis-rb names the role with a Symbol; the master's name travels in :host.
          normalized[:role] = normalized[:role].to_s if normalized[:role]
          normalized[:pool_size] = Integer(pool_size) if pool_size
          normalized[:ssl_params] = tls_params(options[:ssl_params] || {}) if options[:ssl]
          normalized
        end

        # redis-rb's ssl_params (OpenSSL objects or file names) as PEM for the native TLS client:
        # ca_file/ca_path, cert, key, verify_mode.
        def tls_params(params)
          ca = [params[:ca_file] && File.read(params[:ca_file]),
                params[:ca_path] && Dir[File.join(params[:ca_path], "*.{pem,crt}")].map { |f| File.read(f) }.join("\n")]
               .compact.join("\n")
          {
            ca_pem: ca.empty? ? nil : ca,
            cert_pem: pem(params[:cert]),
            key_pem: pem(params[:key], private_key: true),
            verify: !(defined?(OpenSSL::SSL::VERIFY_NONE) && params[:verify_mode] == OpenSSL::SSL::VERIFY_NONE)
          }
        end

        def pem(value, private_key: false)
          return nil if value.nil?
          return value.to_s unless value.respond_to?(:to_pem)

          private_key && value.respond_to?(:private_to_pem) ? value.private_to_pem : value.to_pem
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
