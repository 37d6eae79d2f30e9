# frozen_string_literal: true

require "erb"
require "monitor"
require "openssl"
require "uri"
require "yaml"
require "redis"
require "connection_pool"

module Gitlab
  module Redis
    # The base class of GitLab's configured Redis instances (SharedState, Cache, Sessions, ...).
    # A subclass names an instance; the class finds that instance's configuration, shapes it
    # into redis-rb options and keeps a connection pool of clients built from them:
    #
    #   class Gitlab::Redis::Foo < Gitlab::Redis::Wrapper
    #     def self.config_fallback = SharedState   # used while Foo has no configuration
    #   end
    #
    #   Gitlab::Redis::Foo.with { |redis| redis.get("key") }
    #
    # Where the configuration of an instance named `foo` comes from, first match wins:
    #
    #   1. the file named by ENV["GITLAB_REDIS_FOO_CONFIG_FILE"] (an error if it does not exist)
    #   2. the `foo` entry of the environment's section of config/redis.yml
    #   3. config/redis.foo.yml
    #   4. the config_fallback class, looked up from its step 1 on (its own fallback included)
    #   5. the file named by ENV["GITLAB_REDIS_CONFIG_FILE"] (an error if it does not exist)
    #   6. config/resque.yml
    #   7. nothing: redis://localhost:6379
    #
    # A file counts only when it has an entry for the current environment (RAILS_ENV, else
    # RACK_ENV, else Rails.env, else "development"), so one file can configure production while
    # development falls through to the next source. Files are ERB, then YAML.
    #
    # Configuration is read again on every call (as GitLab does), so nothing but the pool is
    # cached, and no secret is kept in an instance variable.
    class Wrapper
      # A configuration that cannot be used. Messages name the file, never its contents.
      ConfigError = Class.new(StandardError)
      # A file named by the configuration (a TLS certificate or key) does not exist.
      InvalidPathError = Class.new(ConfigError)

      DEFAULT_URL = "redis://localhost:6379"
      DEFAULT_PORT = 6379
      DEFAULT_SENTINEL_PORT = 26379
      GLOBAL_CONFIG_FILE_ENV = "GITLAB_REDIS_CONFIG_FILE"
      REDACTED = "*****"
      SECRET_KEYS = %i[password sentinel_password].freeze

      # GitLab's heuristic: a few connections for the process's own housekeeping plus one per
      # thread that may run a request or a job at the same time.
      BASE_POOL_SIZE = 5
      # Puma's and Rails' default for RAILS_MAX_THREADS.
      DEFAULT_MAX_THREADS = 5

      # Reentrant: a subclass's pool_size or redis may well reach for another instance's pool.
      POOL_LOCK = Monitor.new

      # Where an instance's configuration was found: the file, the entry within it for
      # config/redis.yml, and the raw value (a URL String or a Hash) for the environment.
      Source = Struct.new(:path, :entry, :value, keyword_init: true) do
        def to_s
          entry ? "#{path} (entry #{entry.inspect})" : path
        end

        # Struct's own inspect would print the value, passwords included.
        def inspect
          "#<#{self.class.name} #{self}>"
        end
      end

      class << self
        attr_writer :rails_root

        def pool_size=(size)
          @pool_size = size.nil? ? nil : Integer(size)
          raise ArgumentError, "pool_size must be positive" if @pool_size && @pool_size < 1
        end

        # The directory whose config/ holds the configuration files. Set on Wrapper for every
        # instance or on a subclass for that one only; otherwise Rails.root, else the working
        # directory (this gem does not depend on Rails, and MailRoom-like processes lack it).
        def rails_root
          return @rails_root.to_s if @rails_root
          return superclass.rails_root if superclass.respond_to?(:rails_root)

          rails = defined?(::Rails) && ::Rails
          rails.respond_to?(:root) && rails.root ? rails.root.to_s : Dir.pwd
        end

        def rails_env
          env_value("RAILS_ENV") || env_value("RACK_ENV") || framework_env || "development"
        end

        # "SharedState" for Gitlab::Redis::SharedState.
        def store_name
          unless name
            raise NameError, "an anonymous #{Wrapper.name} subclass has no instance name: " \
                             "assign it to a constant or define self.name"
          end

          name.split("::").last
        end

        # "shared_state" for Gitlab::Redis::SharedState: names the instance's files and
        # variables, and is what a MultiStore should be given (its flags derive from it).
        def instance_name
          store_name
            .gsub(/([A-Z\d]+)([A-Z][a-z])/, '\1_\2')
            .gsub(/([a-z\d])([A-Z])/, '\1_\2')
            .downcase
        end

        def config_file_env_var
          "GITLAB_REDIS_#{instance_name.upcase}_CONFIG_FILE"
        end

        # The instance whose configuration this one uses while it has none of its own:
        # typically the instance its data is being split off from.
        def config_fallback
          nil
        end

        # The file the configuration comes from, nil when none does.
        def config_file_name(env = rails_env)
          config_source(env)&.path
        end

        def config_source(env = rails_env)
          own_config_source(env.to_s, []) || global_config_source(env.to_s)
        end

        %i[params redacted_params url safe_url db sentinels sentinels?].each do |method|
          define_method(method) { new.public_send(method) }
        end

        # A new client for this instance. Subclasses override this to return something else
        # that quacks like `::Redis` -- a Gitlab::Redis::MultiStore during a migration.
        def redis
          ::Redis.new(params)
        end

        def pool
          @pool || POOL_LOCK.synchronize { @pool ||= ::ConnectionPool.new(size: pool_size) { redis } }
        end

        def with(&block)
          pool.with(&block)
        end

        def version
          with { |redis| redis.info["redis_version"] }
        end

        def pool_size
          @pool_size || (BASE_POOL_SIZE + concurrent_threads)
        end

        # Closes the pooled connections (those in use as they are returned) and lets the next
        # call build a new pool: after the configuration changed, or in a forked child.
        def reset_pool!
          pool = POOL_LOCK.synchronize do
            current = @pool
            @pool = nil
            current
          end
          pool&.shutdown(&:close)
          nil
        end

        # Free text that may quote URLs (an error message), each URL's password replaced by
        # REDACTED.
        def redact_text(text)
          text.gsub(%r{(://[^:/@\s]*:)[^@\s]*@}) { "#{Regexp.last_match(1)}#{REDACTED}@" }
        end

        # The URL with its password (if any) replaced by REDACTED.
        def redact_url(url)
          uri = URI.parse(url)
          return url unless uri.password

          uri.userinfo = "#{uri.user}:#{REDACTED}"
          uri.to_s
        rescue URI::Error
          # Whatever it holds, an unparsable URL cannot be redacted piecewise.
          "<invalid URL>"
        end

        protected

        def own_config_source(env, seen)
          if seen.include?(self)
            chain = [*seen, self].map(&:name).join(" -> ")
            raise ConfigError, "config_fallback cycle: #{chain}"
          end

          required_file_source(env_value(config_file_env_var), config_file_env_var, env) ||
            file_source(config_path("redis.yml"), env, entry: instance_name) ||
            file_source(config_path("redis.#{instance_name}.yml"), env) ||
            validated_fallback&.own_config_source(env, [*seen, self])
        end

        private

        def global_config_source(env)
          required_file_source(env_value(GLOBAL_CONFIG_FILE_ENV), GLOBAL_CONFIG_FILE_ENV, env) ||
            file_source(config_path("resque.yml"), env)
        end

        def validated_fallback
          fallback = config_fallback
          return if fallback.nil?
          return fallback if fallback.is_a?(Class) && fallback < Wrapper

          raise TypeError, "#{name}.config_fallback must be a #{Wrapper.name} subclass, not #{fallback.class}"
        end

        def config_path(filename)
          File.join(rails_root, "config", filename)
        end

        # A file named by an environment variable must exist: falling through to another
        # source would silently connect somewhere the operator did not ask for.
        def required_file_source(path, variable, env)
          return unless path

          path = File.expand_path(path, rails_root)
          raise ConfigError, "#{variable} names #{path}, which is not a readable file" unless File.file?(path)

          file_source(path, env)
        end

        def file_source(path, env, entry: nil)
          return unless File.file?(path)

          value = environment_section(path, env)
          value = instance_entry(value, entry, path, env) if entry && !value.nil?
          return if value.nil?

          source = Source.new(path: path, entry: entry, value: value)
          unless value.is_a?(String) || value.is_a?(Hash)
            raise ConfigError, "#{source}: the #{env.inspect} configuration must be a URL or a mapping"
          end

          source
        end

        # config/redis.yml holds every instance, keyed by name within each environment.
        def instance_entry(section, entry, path, env)
          unless section.is_a?(Hash)
            raise ConfigError, "#{path}: the #{env.inspect} section must map instance names to their configuration"
          end

          section[entry]
        end

        def environment_section(path, env)
          document = load_config_file(path)
          return if document.nil? || document == false
          raise ConfigError, "#{path}: expected a mapping of environments at the top level" unless document.is_a?(Hash)

          document[env]
        end

        # ERB, then YAML. Errors name the file and a line, never the text: a config file holds
        # passwords, and exception messages end up in logs and error trackers. `cause: nil`
        # keeps the original (whose message may quote the file) out of those reports too.
        def load_config_file(path)
          parse_yaml(render_erb(read_text(path), path), path)
        end

        def read_text(path)
          File.read(path)
        rescue SystemCallError => e
          raise ConfigError, "cannot read #{path} (#{e.class.name})", cause: nil
        end

        def render_erb(template, path)
          erb = ERB.new(template)
          erb.filename = path
          erb.result
        rescue StandardError, ScriptError => e
          line = erb_error_line(e, path)
          raise ConfigError, "#{path}: ERB failed with #{e.class.name}#{" at line #{line}" if line}", cause: nil
        end

        def parse_yaml(text, path)
          YAML.safe_load(text, aliases: true, filename: path)
        rescue Psych::SyntaxError => e
          raise ConfigError, "#{path}: invalid YAML at line #{e.line} column #{e.column} (#{e.problem})", cause: nil
        rescue Psych::Exception => e
          raise ConfigError, "#{path}: YAML not allowed in a Redis config file (#{e.class.name})", cause: nil
        end

        def erb_error_line(error, path)
          location = error.backtrace_locations&.find { |loc| loc.path == path }
          return location.lineno if location

          # A SyntaxError has no location for the template, only a message quoting it.
          error.message[/^#{Regexp.escape(path)}:(\d+):/, 1]&.to_i
        end

        def env_value(name)
          value = ENV[name]
          value unless value.nil? || value.empty?
        end

        def framework_env
          rails = defined?(::Rails) && ::Rails
          rails.env.to_s if rails.respond_to?(:env) && rails.env
        end

        # Inside GitLab, Gitlab::Runtime knows the Puma or Sidekiq concurrency (and that other
        # processes are single-threaded). Elsewhere RAILS_MAX_THREADS is the convention.
        def concurrent_threads
          runtime = defined?(::Gitlab::Runtime) && ::Gitlab::Runtime
          if runtime.respond_to?(:max_threads)
            return runtime.multi_threaded? ? runtime.max_threads : 0
          end

          value = env_value("RAILS_MAX_THREADS")
          return DEFAULT_MAX_THREADS unless value

          begin
            Integer(value, 10)
          rescue ArgumentError
            raise ConfigError, "RAILS_MAX_THREADS must be an integer", cause: nil
          end
        end
      end

      attr_reader :rails_env

      def initialize(rails_env = nil)
        @rails_env = (rails_env || self.class.rails_env).to_s
      end

      def config_source
        self.class.config_source(rails_env)
      end

      def config_file_name
        config_source&.path
      end

      # The redis-rb options: what `::Redis.new` and Gitlab::Redis::MultiStore.new take. A new
      # Hash on every call, so callers may change it. It holds the passwords redis-rb needs:
      # log `redacted_params` instead.
      def params
        source = config_source
        config = raw_config(source)
        url = config.delete(:url)

        options =
          if config.key?(:cluster)
            # A cluster has no URL of its own, and only db 0.
            config.merge(db: 0)
          else
            # Explicit keys win over what the URL says, as in GitLab.
            url_options(url || DEFAULT_URL, source).merge(config)
          end

        shape_sentinels!(options, source)
        load_tls_files!(options, source)
        options
      end

      def redacted_params
        redact(params)
      end

      # The configured URL, password included; DEFAULT_URL when nothing configures the instance.
      def url
        config = raw_config(config_source)
        config[:url] || (DEFAULT_URL unless config.key?(:cluster))
      end

      def safe_url
        value = url
        value && self.class.redact_url(value)
      end

      def db
        params[:db] || 0
      end

      def sentinels
        params[:sentinels]
      end

      def sentinels?
        !sentinels.nil?
      end

      # Never the password: inspect output ends up in consoles, logs and error reports.
      def inspect
        source = config_source
        "#<#{self.class.name} env=#{rails_env} url=#{safe_url} config=#{source || 'none'}>"
      rescue StandardError => e
        "#<#{self.class.name} env=#{rails_env} unusable configuration (#{e.class.name})>"
      end
      alias to_s inspect

      private

      def raw_config(source)
        case (value = source&.value)
        when nil then {}
        when String then { url: value }
        else deep_symbolize(value)
        end
      end

      def url_options(url, source)
        raise ConfigError, "#{source}: url must be a String" unless url.is_a?(String)

        uri = begin
          URI.parse(url)
        rescue URI::Error
          # The message of URI's error quotes the URL, password and all.
          raise ConfigError, "#{source}: url is not a valid URL", cause: nil
        end

        case uri.scheme
        when "unix" then unix_options(uri, source)
        when "redis", "rediss" then tcp_options(uri, source)
        else raise ConfigError, "#{source}: url must start with redis://, rediss:// or unix:"
        end
      end

      # redis-rb would read a unix: URL too, but GitLab has always turned it into `path:` (and
      # `db` from the query) itself, and configurations rely on the query form of db.
      def unix_options(uri, source)
        raise ConfigError, "#{source}: unix: url has no socket path" if uri.path.nil? || uri.path.empty?

        { path: uri.path }.merge(query_db(uri, source))
      end

      def tcp_options(uri, source)
        raise ConfigError, "#{source}: url has no host" if uri.hostname.nil? || uri.hostname.empty?

        options = { host: uri.hostname, port: uri.port || DEFAULT_PORT }
        options[:username] = unescape(uri.user) unless uri.user.nil? || uri.user.empty?
        options[:password] = unescape(uri.password) unless uri.password.nil? || uri.password.empty?
        options[:ssl] = true if uri.scheme == "rediss"

        db = uri.path.to_s.delete_prefix("/")
        options[:db] = parse_db(db, source) unless db.empty?
        options.merge(query_db(uri, source))
      end

      def query_db(uri, source)
        return {} unless uri.query

        db = URI.decode_www_form(uri.query).to_h["db"]
        db.nil? || db.empty? ? {} : { db: parse_db(db, source) }
      end

      def parse_db(value, source)
        raise ConfigError, "#{source}: url has an invalid db (expected a number)" unless value.match?(/\A\d+\z/)

        value.to_i
      end

      # Percent-decoding only: unlike CGI.unescape, a "+" in a password stays a "+".
      def unescape(component)
        URI::DEFAULT_PARSER.unescape(component)
      end

      # redis-rb 4.8 takes the master's name from `host` (the URL's host, redis://mymaster);
      # redis-rb 5 and redis-client want `name`. Both are set, so either client finds it.
      # A top-level sentinel_password/sentinel_username is copied into each sentinel that has
      # none, as 4.8 only authenticates to sentinels with their own credentials.
      def shape_sentinels!(options, source)
        return unless options.key?(:sentinels)

        sentinels = options[:sentinels]
        if sentinels.nil? || sentinels == []
          options.delete(:sentinels)
          return
        end
        raise ConfigError, "#{source}: sentinels must be a list" unless sentinels.is_a?(Array)

        options[:sentinels] = sentinels.map { |sentinel| sentinel_options(sentinel, options, source) }
        master = options[:name] || options[:host]
        options[:name] = options[:host] = master
      end

      def sentinel_options(sentinel, options, source)
        raise ConfigError, "#{source}: each sentinel must be a mapping with host and port" unless sentinel.is_a?(Hash)

        entry = sentinel.slice(:host, :port, :username, :password)
        raise ConfigError, "#{source}: a sentinel has no host" if entry[:host].nil? || entry[:host].to_s.empty?

        entry[:port] = sentinel_port(entry[:port], source)
        entry[:username] ||= options[:sentinel_username] if options[:sentinel_username]
        entry[:password] ||= options[:sentinel_password] if options[:sentinel_password]
        entry
      end

      def sentinel_port(port, source)
        return DEFAULT_SENTINEL_PORT if port.nil?

        Integer(port)
      rescue ArgumentError, TypeError
        raise ConfigError, "#{source}: a sentinel has an invalid port", cause: nil
      end

      # Files in ssl_params become the OpenSSL objects redis-rb's SSL context wants.
      def load_tls_files!(options, source)
        ssl_params = options[:ssl_params]
        return unless ssl_params.is_a?(Hash)

        cert_file = ssl_params.delete(:cert_file)
        key_file = ssl_params.delete(:key_file)
        return unless cert_file || key_file

        ssl_params[:cert] = OpenSSL::X509::Certificate.new(read_tls_file(cert_file, "certificate", source)) if cert_file
        ssl_params[:key] = OpenSSL::PKey.read(read_tls_file(key_file, "key", source)) if key_file
      rescue OpenSSL::OpenSSLError => e
        raise ConfigError, "#{source}: ssl_params hold an unreadable certificate or key (#{e.class.name})", cause: nil
      end

      def read_tls_file(path, kind, source)
        path = File.expand_path(path.to_s, self.class.rails_root)
        raise InvalidPathError, "#{source}: #{kind} file #{path} does not exist" unless File.file?(path)

        File.read(path)
      end

      def redact(value, secret_keys = SECRET_KEYS)
        case value
        when Hash
          value.to_h do |key, item|
            next [key, REDACTED] if secret_keys.include?(key) && !item.nil?

            # The private key of a TLS client certificate is a secret too.
            [key, key == :ssl_params ? redact(item, [*SECRET_KEYS, :key]) : redact(item)]
          end
        when Array then value.map { |item| redact(item) }
        when String then value.include?("://") ? self.class.redact_url(value) : value
        else value
        end
      end

      def deep_symbolize(value)
        case value
        when Hash then value.to_h { |k, v| [k.respond_to?(:to_sym) ? k.to_sym : k, deep_symbolize(v)] }
        when Array then value.map { |v| deep_symbolize(v) }
        else value
        end
      end
    end
  end
end
