# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Turns each accepted form of a store -- a `::Redis`, a URL, or a Hash of redis-rb options
      # -- into the options the native core connects with. redis-rb's own option parser does the
      # work, so URLs, defaults (`REDIS_URL`, port 6379, timeout 5.0) and `timeout:` expansion
      # behave exactly as `Redis.new` would. A Redis Cluster is a `::Redis` built with
      # `cluster:`, a Hash with `cluster:`, or an Array of its nodes' URLs (or host/port Hashes).
      module StoreOptions
        PASSED_TO_CORE = %i[
          host port path db username password id ssl
          connect_timeout read_timeout write_timeout reconnect_attempts
          sentinels role
        ].freeze

        module_function

        def valid?(store)
          return valid?(store.redis) if namespaced?(store)

          store.is_a?(::Redis) || store.is_a?(String) || store.is_a?(Hash) || store.is_a?(Array)
        end

        # A Redis::Namespace (Debian's ruby-redis-namespace), nested ones too: the store is the
        # client inside, and its keys live under the namespace (see the core's namespace.rs).
        def namespaced?(store)
          defined?(::Redis::Namespace) && store.is_a?(::Redis::Namespace)
        end

        def normalize(store, pool_size: nil, spin_wait: nil)
          return normalize_namespaced(store, pool_size: pool_size, spin_wait: spin_wait) if namespaced?(store)

          cluster = cluster_options(store)
          return normalize_cluster(cluster, pool_size: pool_size).merge(tuning(spin_wait)) if cluster

          options = parsed_options(store)
          normalized = options.slice(*PASSED_TO_CORE)
          # redis-rb names the role with a Symbol; the master's name travels in :host.
          normalized[:role] = normalized[:role].to_s if normalized[:role]
          normalized[:pool_size] = Integer(pool_size) if pool_size
          normalized[:ssl_params] = tls_params(options[:ssl_params] || {}) if options[:ssl]
          normalized.merge(tuning(spin_wait))
        end

        def normalize_namespaced(store, pool_size:, spin_wait:)
          names = []
          while namespaced?(store)
            # A namespace given as a Proc is read per call by redis-namespace; the MultiStore's
            # connections need one, fixed when it is built.
            if store.instance_variable_get(:@namespace).respond_to?(:call)
              raise ArgumentError, "a Redis::Namespace whose namespace is a Proc cannot be a MultiStore store"
            end

            name = store.namespace
            names.unshift(name.to_s) unless name.nil?
            store = store.redis
          end
          if names.any? { |name| name.match?(/[*?\[\]\\]/) }
            # Prefixed to KEYS and SCAN patterns, such a name would match other namespaces' keys.
            raise ArgumentError, "a namespace with glob characters (* ? [ ] \\) cannot be a MultiStore store"
          end
          normalized = normalize(store, pool_size: pool_size, spin_wait: spin_wait)
          names.empty? ? normalized : normalized.merge(namespace: names.join(":"))
        end

        # Two namespaces of one server and database, one inside the other ("cache" and
        # "cache:v2"): the outer one's SCAN would see the inner one's keys as its own, and a
        # backfill would copy them into the inner namespace once more.
        # A store without a namespace contains every namespace of its server. (Two names of one
        # server, or a SELECT since, are caught by the core before a backfill or verify scans.)
        # One namespace on both sides is one store (Wrapper's unconfigured instance falling back
        # to its config_fallback's server): each write goes to it once, as for two stores of one
        # server without a namespace.
        def check_namespaces!(primary, secondary)
          return unless primary[:namespace] || secondary[:namespace]
          return unless primary.values_at(:host, :port, :path, :db) == secondary.values_at(:host, :port, :path, :db)

          outer, inner = [primary[:namespace].to_s, secondary[:namespace].to_s].sort_by(&:length)
          return if inner == outer
          return unless outer.empty? || inner.start_with?("#{outer}:")

          describe = ->(ns) { ns.empty? ? "no namespace" : "the namespace #{ns.inspect}" }
          raise ArgumentError, "#{describe.call(outer)} and #{describe.call(inner)} of one server overlap: " \
                               "the keys of one would be seen as the other's"
        end

        def tuning(spin_wait)
          spin_wait.nil? ? {} : { spin_wait: Float(spin_wait) }
        end

        # redis-rb's ssl_params (OpenSSL objects or file names) as PEM for the native TLS client:
        # ca_file/ca_path, cert, key, verify_mode, verify_hostname. Without ca_file/ca_path the
        # system's trust store is read, as OpenSSL's defaults (SSL_CERT_FILE / SSL_CERT_DIR, else
        # the paths OpenSSL was built with) are for redis-rb.
        def tls_params(params)
          if params.key?(:cert_store)
            raise ArgumentError, "ssl_params[:cert_store] cannot be read by gitlab_multistore's TLS client: give the " \
                                 "CA certificates as ca_file or ca_path (without them the system's trust store is used, " \
                                 "as OpenSSL's set_default_paths does)"
          end
          ca = [params[:ca_file] && File.read(params[:ca_file]), params[:ca_path] && certificates_in(params[:ca_path])]
               .compact.join("\n")
          {
            ca_pem: ca.empty? ? system_trust_store : ca,
            cert_pem: pem(params[:cert]),
            key_pem: pem(params[:key], private_key: true),
            verify: !(defined?(OpenSSL::SSL::VERIFY_NONE) && params[:verify_mode] == OpenSSL::SSL::VERIFY_NONE),
            verify_hostname: params.fetch(:verify_hostname, true) ? true : false
          }
        end

        def certificates_in(dir)
          Dir[File.join(dir, "*")].select { |f| File.file?(f) && File.read(f, 64).to_s.include?("-----BEGIN") }
                                  .map { |f| File.read(f) }.join("\n")
        end

        # The CA certificates OpenSSL trusts by default, as PEM; nil when none can be read (the
        # native client then falls back to the Mozilla roots it carries).
        def system_trust_store
          require "openssl"
          file = ENV["SSL_CERT_FILE"] || OpenSSL::X509::DEFAULT_CERT_FILE
          dir = ENV["SSL_CERT_DIR"] || OpenSSL::X509::DEFAULT_CERT_DIR
          pem = File.file?(file) ? File.read(file) : ""
          pem = certificates_in(dir) if pem.empty? && File.directory?(dir)
          pem.empty? ? nil : pem
        rescue SystemCallError, LoadError
          nil
        end

        def pem(value, private_key: false)
          return nil if value.nil?
          return value.to_s unless value.respond_to?(:to_pem)

          private_key && value.respond_to?(:private_to_pem) ? value.private_to_pem : value.to_pem
        end

        # The options a cluster was (or is to be) built with, or nil for a single server.
        def cluster_options(store)
          case store
          when Array then { cluster: store }
          when Hash then store if store.key?(:cluster) || store.key?("cluster")
          when ::Redis
            # redis-rb 4.8's cluster client keeps its options to itself; the Redis object keeps
            # the ones it was built with.
            store.instance_variable_get(:@options) if store._client.is_a?(::Redis::Cluster)
          end
        end

        # Each node's options through redis-rb's own parsers (node URLs, credentials shared
        # from the first node, timeouts); the core takes the common ones and the node list.
        def normalize_cluster(options, pool_size:)
          options = options.transform_keys(&:to_sym)
          nodes = ::Redis::Cluster::Option.new(options).per_node_key.values.map do |node|
            [node[:scheme], ::Redis::Client.new(node).options]
          end
          scheme, first = nodes.first
          # host and port (the first node's) only name the store, as `connection` shows it.
          normalized = first.slice(*(PASSED_TO_CORE - %i[path db sentinels role]))
          normalized[:ssl] = true if scheme == "rediss"
          normalized[:ssl_params] = tls_params(first[:ssl_params] || {}) if normalized[:ssl]
          normalized[:cluster] = nodes.map { |_, node| { host: node[:host], port: node[:port] } }
          normalized[:pool_size] = Integer(pool_size) if pool_size
          normalized
        end

        def parsed_options(store)
          case store
          when ::Redis
            store._client.options
          when String then ::Redis::Client.new(url: store).options
          when Hash then ::Redis::Client.new(store).options
          end
        end
      end
    end
  end
end
