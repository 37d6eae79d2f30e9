# frozen_string_literal: true

require "gitlab/redis/wrapper"
require "fileutils"
require "openssl"
require "pathname"
require "tmpdir"

# Mirrors GitLab's redis_shared_examples (and trace_chunks_spec's fallback examples) for a
# Wrapper subclass: where the configuration is found, how it is shaped into redis-rb options,
# and what the pool hands out -- connected to real redis-servers wherever a connection is made.
RSpec.describe Gitlab::Redis::Wrapper do
  # Every example starts from an empty config directory and an environment without the
  # shell's or CI's Redis settings; both are put back afterwards.
  around do |example|
    saved_env = ENV.to_h
    ENV.keys.grep(/\AGITLAB_REDIS_|\AGITLAB_MULTISTORE_|\A(RAILS|RACK)_ENV\z|\ARAILS_MAX_THREADS\z/)
       .each { |name| ENV.delete(name) }
    ENV["RAILS_ENV"] = "test"

    Dir.mktmpdir("gitlab-redis-wrapper-") do |dir|
      @root = dir
      FileUtils.mkdir_p(File.join(dir, "config"))
      described_class.rails_root = dir
      example.run
    end
  ensure
    described_class.rails_root = nil
    ENV.replace(saved_env)
  end

  let(:root) { @root }

  let!(:shared_state) { stub_const("Gitlab::Redis::SharedState", Class.new(described_class)) }
  let!(:foo) do
    stub_const("Gitlab::Redis::Foo", Class.new(described_class) do
      # The data on Foo used to live on SharedState.
      def self.config_fallback
        Gitlab::Redis::SharedState
      end
    end)
  end

  after do
    foo.reset_pool!
    shared_state.reset_pool!
  end

  def config_path(name)
    File.join(root, "config", name)
  end

  # A Hash is written as YAML; a String is written as-is (for ERB, anchors and broken files).
  def write_config(name, content)
    path = name.start_with?("/") ? name : config_path(name)
    FileUtils.mkdir_p(File.dirname(path))
    File.write(path, content.is_a?(String) ? content : YAML.dump(content))
    path
  end

  def config_error_for(klass)
    klass.params
  rescue described_class::ConfigError => e
    e
  else
    raise "expected #{klass}.params to raise a ConfigError"
  end

  describe ".store_name and .instance_name" do
    it "take the last segment of the class name, underscored for files, variables and flags" do
      expect(shared_state.store_name).to eq("SharedState")
      expect(shared_state.instance_name).to eq("shared_state")
      expect(shared_state.config_file_env_var).to eq("GITLAB_REDIS_SHARED_STATE_CONFIG_FILE")
    end

    it "split acronyms like ActiveSupport's underscore does" do
      db_load_balancing = Class.new(described_class) { def self.name = "Gitlab::Redis::DBLoadBalancing" }
      trace_chunks = Class.new(described_class) { def self.name = "TraceChunks" }

      expect(db_load_balancing.instance_name).to eq("db_load_balancing")
      expect(trace_chunks.instance_name).to eq("trace_chunks")
    end

    it "refuse an anonymous subclass, which has no name to look its configuration up by" do
      expect { Class.new(described_class).params }.to raise_error(NameError, /anonymous/)
    end
  end

  describe ".rails_env" do
    it "is RAILS_ENV, else RACK_ENV, else Rails.env, else development" do
      ENV["RACK_ENV"] = "rack"
      expect(foo.rails_env).to eq("test")

      ENV.delete("RAILS_ENV")
      expect(foo.rails_env).to eq("rack")

      ENV["RACK_ENV"] = ""
      stub_const("Rails", Struct.new(:env, :root).new("staging", nil))
      expect(foo.rails_env).to eq("staging")

      hide_const("Rails")
      expect(foo.rails_env).to eq("development")
    end

    it "picks the section of each config file" do
      write_config("redis.foo.yml", "production" => "redis://production-host", "test" => "redis://test-host")

      expect(foo.url).to eq("redis://test-host")
      expect(foo.new("production").url).to eq("redis://production-host")
      ENV["RAILS_ENV"] = "production"
      expect(foo.url).to eq("redis://production-host")
    end
  end

  describe ".rails_root" do
    it "is shared by every instance when set on Wrapper, and can be set per instance" do
      elsewhere = File.join(root, "elsewhere")
      foo.rails_root = elsewhere

      expect(shared_state.rails_root).to eq(root)
      expect(foo.rails_root).to eq(elsewhere)
    end

    it "defaults to Rails.root when Rails is loaded, else to the working directory" do
      described_class.rails_root = nil
      expect(foo.rails_root).to eq(Dir.pwd)

      stub_const("Rails", Struct.new(:env, :root).new("test", Pathname(root)))
      expect(foo.rails_root).to eq(root)
    end
  end

  describe ".config_file_name" do
    let(:redis_yml) { config_path("redis.yml") }
    let(:foo_env_file) { write_config(File.join(root, "elsewhere", "foo.yml"), "test" => "redis://foo-env-file") }
    let(:shared_state_env_file) do
      write_config(File.join(root, "elsewhere", "shared_state.yml"), "test" => "redis://shared-state-env-file")
    end
    let(:global_env_file) { write_config(File.join(root, "elsewhere", "global.yml"), "test" => "redis://global-env-file") }

    def write_redis_yml(**entries)
      write_config("redis.yml", "test" => entries.transform_keys(&:to_s))
    end

    def expect_configuration_from(path, url)
      expect(foo.config_file_name).to eq(path)
      expect(foo.url).to eq(url)
    end

    it "is nil when there is no config file anywhere, and the instance uses localhost" do
      expect(foo.config_file_name).to be_nil
      expect(foo.url).to eq("redis://localhost:6379")
      expect(foo.params).to eq(host: "localhost", port: 6379)
    end

    it "follows GitLab's order, each source shadowing the ones after it" do
      ENV["GITLAB_REDIS_FOO_CONFIG_FILE"] = foo_env_file
      write_redis_yml(foo: "redis://foo-in-redis-yml", shared_state: "redis://shared-state-in-redis-yml")
      foo_yml = write_config("redis.foo.yml", "test" => "redis://foo-yml")
      ENV["GITLAB_REDIS_SHARED_STATE_CONFIG_FILE"] = shared_state_env_file
      shared_state_yml = write_config("redis.shared_state.yml", "test" => "redis://shared-state-yml")
      ENV["GITLAB_REDIS_CONFIG_FILE"] = global_env_file
      resque_yml = write_config("resque.yml", "test" => "redis://resque-yml")

      aggregate_failures do
        expect_configuration_from(foo_env_file, "redis://foo-env-file")

        ENV.delete("GITLAB_REDIS_FOO_CONFIG_FILE")
        expect_configuration_from(redis_yml, "redis://foo-in-redis-yml")

        write_redis_yml(shared_state: "redis://shared-state-in-redis-yml")
        expect_configuration_from(foo_yml, "redis://foo-yml")

        # From here on Foo has nothing of its own and takes SharedState's configuration,
        # found by SharedState's own lookup.
        File.delete(foo_yml)
        expect_configuration_from(shared_state_env_file, "redis://shared-state-env-file")

        ENV.delete("GITLAB_REDIS_SHARED_STATE_CONFIG_FILE")
        expect_configuration_from(redis_yml, "redis://shared-state-in-redis-yml")

        File.delete(redis_yml)
        expect_configuration_from(shared_state_yml, "redis://shared-state-yml")

        File.delete(shared_state_yml)
        expect_configuration_from(global_env_file, "redis://global-env-file")

        ENV.delete("GITLAB_REDIS_CONFIG_FILE")
        expect_configuration_from(resque_yml, "redis://resque-yml")

        File.delete(resque_yml)
        expect_configuration_from(nil, "redis://localhost:6379")
      end
    end

    it "goes on to the global sources for an instance without a fallback" do
      ENV["GITLAB_REDIS_CONFIG_FILE"] = global_env_file
      write_config("redis.foo.yml", "test" => "redis://foo-yml")

      expect(shared_state.config_file_name).to eq(global_env_file)
      expect(shared_state.url).to eq("redis://global-env-file")
    end

    it "follows a chain of fallbacks" do
      trace_chunks = stub_const("Gitlab::Redis::TraceChunks", Class.new(described_class) do
        def self.config_fallback = Gitlab::Redis::Foo
      end)
      write_config("redis.shared_state.yml", "test" => "redis://shared-state-yml")

      expect(trace_chunks.url).to eq("redis://shared-state-yml")
    end

    it "skips a file without an entry for the current environment" do
      write_config("redis.yml", "production" => { "foo" => "redis://foo-in-production" })
      write_config("redis.foo.yml", "production" => "redis://foo-yml-in-production")
      write_config("resque.yml", "test" => "redis://resque-yml")

      expect(foo.url).to eq("redis://resque-yml")
      expect(foo.new("production").url).to eq("redis://foo-in-production")
    end

    it "treats an empty variable as unset" do
      ENV["GITLAB_REDIS_FOO_CONFIG_FILE"] = ""
      write_config("redis.foo.yml", "test" => "redis://foo-yml")

      expect(foo.url).to eq("redis://foo-yml")
    end

    it "resolves a relative path in a variable against the config root" do
      ENV["GITLAB_REDIS_FOO_CONFIG_FILE"] = "elsewhere/foo.yml"
      write_config(File.join(root, "elsewhere", "foo.yml"), "test" => "redis://relative")

      expect(foo.url).to eq("redis://relative")
    end

    it "fails, naming the variable and the file, when a variable names a file that does not exist" do
      missing = File.join(root, "nowhere", "redis.yml")
      ENV["GITLAB_REDIS_FOO_CONFIG_FILE"] = missing
      write_config("redis.foo.yml", "test" => "redis://foo-yml")

      expect { foo.url }.to raise_error(described_class::ConfigError,
                                        "GITLAB_REDIS_FOO_CONFIG_FILE names #{missing}, which is not a readable file")
    end

    it "refuses a config_fallback that is not a Wrapper, or that leads back to the instance" do
      stub_const("Gitlab::Redis::Loop", Class.new(described_class) { def self.config_fallback = Gitlab::Redis::Loop })
      stub_const("Gitlab::Redis::Wrong", Class.new(described_class) { def self.config_fallback = String })

      expect { Gitlab::Redis::Loop.url }
        .to raise_error(described_class::ConfigError, /cycle: Gitlab::Redis::Loop -> Gitlab::Redis::Loop/)
      expect { Gitlab::Redis::Wrong.url }.to raise_error(TypeError, /must be a Gitlab::Redis::Wrapper subclass/)
    end
  end

  describe "config files" do
    it "accept the old format (a URL per environment) and the new one (a mapping)" do
      write_config("redis.foo.yml", "test" => "redis://old-format:6379/3")
      write_config("redis.shared_state.yml", "test" => { "url" => "redis://new-format:6379/4", "read_timeout" => 2 })

      expect(foo.params).to eq(host: "old-format", port: 6379, db: 3)
      expect(shared_state.params).to eq(host: "new-format", port: 6379, db: 4, read_timeout: 2)
    end

    it "are ERB first, so a URL can come from the environment" do
      ENV["TEST_GITLAB_REDIS_URL"] = "redis://from-env:6380"
      write_config("redis.foo.yml", <<~YAML)
        test:
          url: <%= ENV["TEST_GITLAB_REDIS_URL"] %>
          connect_timeout: <%= 1 + 1 %>
      YAML

      expect(foo.url).to eq("redis://from-env:6380")
      expect(foo.params).to include(host: "from-env", port: 6380, connect_timeout: 2)
    end

    it "may share settings between environments through YAML anchors" do
      write_config("redis.foo.yml", <<~YAML)
        defaults: &defaults
          url: redis://shared-host:6379
          reconnect_attempts: 3
        production:
          <<: *defaults
        test:
          <<: *defaults
          url: redis://test-host:6379
      YAML

      expect(foo.params).to eq(host: "test-host", port: 6379, reconnect_attempts: 3)
      expect(foo.new("production").params).to eq(host: "shared-host", port: 6379, reconnect_attempts: 3)
    end

    context "when broken" do
      let(:secret) { "hunter2-do-not-print" }

      it "names the file and the line of invalid YAML, not its contents" do
        path = write_config("redis.foo.yml", "test:\n  url: redis://:#{secret}@host\n  password: [#{secret}\n")

        error = config_error_for(foo)
        expect(error.message).to start_with("#{path}: invalid YAML at line")
        expect(error.message).not_to include(secret)
        expect(error.cause).to be_nil
      end

      it "names the file and the line of a failing ERB tag, not the tag" do
        path = write_config("redis.foo.yml", "test:\n  url: redis://:#{secret}@host\n  x: <%= raise '#{secret}' %>\n")

        error = config_error_for(foo)
        expect(error.message).to eq("#{path}: ERB failed with RuntimeError at line 3")
        expect(error.cause).to be_nil
      end

      it "does not quote the template when its Ruby does not parse" do
        path = write_config("redis.foo.yml", "test:\n  password: <%= '#{secret}' + %>\n")

        error = config_error_for(foo)
        expect(error.message).to eq("#{path}: ERB failed with SyntaxError at line 2")
      end

      it "refuses Ruby objects in YAML" do
        path = write_config("redis.foo.yml", "test: !ruby/object:OpenStruct\n  password: #{secret}\n")

        expect { foo.params }
          .to raise_error(described_class::ConfigError, "#{path}: YAML not allowed in a Redis config file (Psych::DisallowedClass)")
      end

      it "refuses a file that is not a mapping of environments, or an entry that is neither URL nor mapping" do
        path = write_config("redis.foo.yml", "- #{secret}\n")
        expect { foo.params }
          .to raise_error(described_class::ConfigError, "#{path}: expected a mapping of environments at the top level")

        write_config("redis.foo.yml", "test: [1, 2]\n")
        expect { foo.params }.to raise_error(described_class::ConfigError, /must be a URL or a mapping/)
      end

      it "does not quote a URL that does not parse, since it may hold a password" do
        path = write_config("redis.foo.yml", "test: redis://:#{secret} with spaces@host\n")

        error = config_error_for(foo)
        expect(error.message).to eq("#{path}: url is not a valid URL")
        expect(error.cause).to be_nil
      end

      it "refuses other URL schemes and a db that is not a number" do
        write_config("redis.foo.yml", "test: http://#{secret}@host\n")
        expect { foo.params }.to raise_error(described_class::ConfigError, /must start with redis:\/\/, rediss:\/\/ or unix:\z/)

        write_config("redis.foo.yml", "test: redis://host/cache\n")
        expect { foo.params }.to raise_error(described_class::ConfigError, /invalid db/)
      end
    end
  end

  describe ".params" do
    def params_for(config)
      write_config("redis.foo.yml", "test" => config)
      foo.params
    end

    it "splits a host-based URL into host, port, db, username and password, with no url key" do
      expect(params_for("redis://bob:mypassword@redis.example.com:6380/99"))
        .to eq(host: "redis.example.com", port: 6380, db: 99, username: "bob", password: "mypassword")
    end

    it "percent-decodes the credentials, keeping a literal plus sign" do
      expect(params_for("redis://:p%40ss+word%2F@[::1]")).to eq(host: "::1", port: 6379, password: "p@ss+word/")
    end

    it "turns a unix: URL into path and db, as GitLab does" do
      expect(params_for("unix:/path/to/redis.sock?db=44")).to eq(path: "/path/to/redis.sock", db: 44)
      expect(params_for("unix:///path/to/redis.sock")).to eq(path: "/path/to/redis.sock")
    end

    it "asks for TLS for a rediss:// URL" do
      expect(params_for("rediss://secure.example.com:6380")).to eq(host: "secure.example.com", port: 6380, ssl: true)
    end

    it "passes the other keys on, explicit ones winning over the URL's" do
      params = params_for("url" => "redis://:from-url@host/1", "db" => 2, "password" => "from-key",
                          "connect_timeout" => 0.5, "read_timeout" => 1, "write_timeout" => 1.5,
                          "reconnect_attempts" => 2, "id" => "foo-client")

      expect(params).to eq(host: "host", port: 6379, db: 2, password: "from-key", connect_timeout: 0.5,
                           read_timeout: 1, write_timeout: 1.5, reconnect_attempts: 2, id: "foo-client")
    end

    it "gives a Redis Cluster its nodes and db 0, without a host" do
      params = params_for("cluster" => [{ "host" => "node1", "port" => 7000 }, { "host" => "node2", "port" => 7001 }],
                          "password" => "myclusterpassword")

      expect(params).to eq(cluster: [{ host: "node1", port: 7000 }, { host: "node2", port: 7001 }],
                           password: "myclusterpassword", db: 0)
      expect(foo.url).to be_nil
    end

    it "withstands mutation" do
      write_config("redis.foo.yml", "test" => "redis://host:6379/1")

      foo.params[:foo] = :bar
      foo.url << "/mutated"

      expect(foo.params).not_to have_key(:foo)
      expect(foo.url).to eq("redis://host:6379/1")
    end

    it "tells #db, with 0 when the URL names none" do
      write_config("redis.foo.yml", "test" => "redis://host/7", "production" => "redis://host")

      expect(foo.db).to eq(7)
      expect(foo.new("production").db).to eq(0)
    end

    describe "ssl_params" do
      let(:key) { OpenSSL::PKey::EC.generate("prime256v1") }
      let(:certificate) do
        OpenSSL::X509::Certificate.new.tap do |cert|
          cert.version = 2
          cert.serial = 1
          cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=gitlab-redis-client")
          cert.public_key = key
          cert.not_before = Time.now
          cert.not_after = Time.now + 3600
          cert.sign(key, OpenSSL::Digest.new("SHA256"))
        end
      end

      it "loads cert_file and key_file into the objects redis-rb's SSL context takes" do
        write_config("client.crt", certificate.to_pem)
        write_config("client.key", key.private_to_pem)

        params = params_for("url" => "rediss://host:6380",
                            "ssl_params" => { "cert_file" => config_path("client.crt"), "key_file" => "config/client.key",
                                              "ca_file" => "/etc/ssl/ca.pem" })

        expect(params[:ssl_params].keys).to contain_exactly(:cert, :key, :ca_file)
        expect(params[:ssl_params][:cert].to_der).to eq(certificate.to_der)
        expect(params[:ssl_params][:key].public_to_der).to eq(key.public_to_der)
        expect(params[:ssl_params][:ca_file]).to eq("/etc/ssl/ca.pem")
      end

      it "names a certificate or key file that does not exist" do
        path = write_config("redis.foo.yml", "test" => { "url" => "rediss://host", "ssl_params" => { "cert_file" => "/no/client.crt" } })
        expect { foo.params }
          .to raise_error(described_class::InvalidPathError, "#{path}: certificate file /no/client.crt does not exist")

        write_config("redis.foo.yml", "test" => { "url" => "rediss://host", "ssl_params" => { "key_file" => "/no/client.key" } })
        expect { foo.params }.to raise_error(described_class::InvalidPathError, "#{path}: key file /no/client.key does not exist")
      end
    end

    describe "Sentinel" do
      let(:sentinel_config) do
        {
          "url" => "redis://:master-password@mymaster",
          "sentinels" => [{ "host" => "sentinel1", "port" => 26380 }, { "host" => "sentinel2", "port" => "26381" },
                          { "host" => "sentinel3" }]
        }
      end

      it "passes the sentinels on, with the master's name from the URL's host" do
        params = params_for(sentinel_config)

        expect(params).to eq(
          host: "mymaster", name: "mymaster", port: 6379, password: "master-password",
          sentinels: [{ host: "sentinel1", port: 26380 }, { host: "sentinel2", port: 26381 },
                      { host: "sentinel3", port: 26379 }]
        )
        expect(foo.sentinels?).to be(true)
        expect(foo.sentinels.map { |s| s[:host] }).to eq(%w[sentinel1 sentinel2 sentinel3])
      end

      it "gives every sentinel without a password of its own the sentinel_password" do
        sentinel_config["sentinel_password"] = "sentinel-password"
        sentinel_config["sentinels"][0]["password"] = "own-password"

        params = params_for(sentinel_config)

        expect(params[:sentinel_password]).to eq("sentinel-password")
        expect(params[:sentinels].map { |s| s[:password] }).to eq(%w[own-password sentinel-password sentinel-password])
      end

      it "takes an explicit master name over the URL's host" do
        expect(params_for(sentinel_config.merge("name" => "gitlab-redis"))).to include(host: "gitlab-redis", name: "gitlab-redis")
      end

      it "is absent when no sentinel is listed" do
        expect(params_for("url" => "redis://host", "sentinels" => [])).to eq(host: "host", port: 6379)
        expect(foo.sentinels?).to be(false)
      end

      it "finds the master through a real Sentinel that asks for a password" do
        master = dedicated_redis_server("--requirepass", "master-password")
        sentinel_port = start_sentinel(master_port: master.port, master_password: "master-password",
                                       requirepass: "sentinel-password")
        write_config("redis.foo.yml", "test" => {
                       "url" => "redis://:master-password@mymaster/2",
                       "sentinel_password" => "sentinel-password",
                       "sentinels" => [{ "host" => "127.0.0.1", "port" => sentinel_port }]
                     })

        foo.with { |redis| redis.set("via-sentinel", "yes") }

        expect(master.client(password: "master-password", db: 2).get("via-sentinel")).to eq("yes")
      end
    end

    it "can be given to Gitlab::Redis::MultiStore.new as a store" do
      write_config("redis.foo.yml", "test" => primary_server.url(3))
      write_config("redis.shared_state.yml", "test" => "unix:#{secondary_server.socket_path}?db=4")

      store = Gitlab::Redis::MultiStore.new(foo.params, shared_state.params, foo.instance_name)
      store.set("passed-as-params", "1")

      expect(secondary_server.client(db: 4).get("passed-as-params")).to eq("1")
    ensure
      store&.close
    end
  end

  describe ".redis, .pool and .with" do
    it "hand out redis-rb clients connected as configured" do
      write_config("redis.foo.yml", "test" => primary_server.url(3))

      expect(foo.redis).to be_an_instance_of(Redis)
      foo.with { |redis| redis.set("key", "value") }

      expect(primary_server.client(db: 3).get("key")).to eq("value")
      expect(primary_server.client.get("key")).to be_nil
    end

    it "connect over the unix socket of a unix: URL" do
      write_config("redis.foo.yml", "test" => { "url" => "unix:#{primary_server.socket_path}?db=5" })

      foo.with { |redis| redis.set("over-the-socket", "1") }

      expect(primary_server.client(db: 5).get("over-the-socket")).to eq("1")
    end

    it "use the password and db from the URL" do
      server = dedicated_redis_server("--requirepass", "s3cr3t+/")
      write_config("redis.foo.yml", "test" => "redis://:s3cr3t%2B%2F@127.0.0.1:#{server.port}/1")

      expect(foo.version).to start_with("7.")
      foo.with { |redis| redis.set("authenticated", "1") }

      expect(server.client(password: "s3cr3t+/", db: 1).get("authenticated")).to eq("1")
    end

    it "connect an unconfigured instance to its fallback's server" do
      write_config("redis.shared_state.yml", "test" => secondary_server.url(2))

      foo.with { |redis| redis.set("on-the-fallback", "1") }

      expect(secondary_server.client(db: 2).get("on-the-fallback")).to eq("1")
    end

    it "can run an empty block when there is no config at all, connecting nowhere" do
      expect { foo.with { nil } }.not_to raise_error
    end

    it "keep one pool per instance, lending the same connection again" do
      write_config("redis.foo.yml", "test" => primary_server.url)
      write_config("redis.shared_state.yml", "test" => secondary_server.url)

      expect(foo.pool).to be_a(ConnectionPool)
      expect(foo.pool).to be(foo.pool)
      expect(foo.pool).not_to be(shared_state.pool)
      first = foo.with { |redis| redis }
      expect(foo.with { |redis| redis }).to be(first)
    end

    it "build a new pool after reset_pool!, closing the old connections" do
      write_config("redis.foo.yml", "test" => primary_server.url)
      old_pool = foo.pool
      old_connection = foo.with { |redis| redis.tap(&:ping) }

      foo.reset_pool!

      expect(old_connection.connected?).to be(false)
      expect(foo.pool).not_to be(old_pool)
      expect(foo.with(&:ping)).to eq("PONG")
    end

    describe ".pool_size" do
      it "is 5 plus RAILS_MAX_THREADS, which defaults to 5 as in Puma" do
        expect(foo.pool_size).to eq(10)
        expect(foo.pool.size).to eq(10)

        ENV["RAILS_MAX_THREADS"] = "18"
        expect(foo.pool_size).to eq(23)
      end

      it "follows Gitlab::Runtime inside GitLab: 5, plus max_threads when multi-threaded" do
        runtime = stub_const("Gitlab::Runtime", Module.new do
          class << self
            attr_accessor :multi_threaded, :max_threads

            def multi_threaded? = multi_threaded
          end
        end)
        ENV["RAILS_MAX_THREADS"] = "40"

        runtime.multi_threaded = false
        expect(foo.pool_size).to eq(5)

        runtime.multi_threaded = true
        runtime.max_threads = 18
        expect(foo.pool_size).to eq(18 + 5)
      end

      it "can be set per instance, or overridden in the subclass" do
        foo.pool_size = 3
        fixed = stub_const("Gitlab::Redis::Fixed", Class.new(described_class) { def self.pool_size = 2 })

        expect(foo.pool.size).to eq(3)
        expect(shared_state.pool_size).to eq(10)
        expect(fixed.pool.size).to eq(2)
        expect { foo.pool_size = 0 }.to raise_error(ArgumentError)
      end

      it "refuses a RAILS_MAX_THREADS that is not a number" do
        ENV["RAILS_MAX_THREADS"] = "many"

        expect { foo.pool_size }.to raise_error(described_class::ConfigError, "RAILS_MAX_THREADS must be an integer")
      end
    end
  end

  # GitLab's "Add a new Redis instance" guide: Foo's .redis returns a MultiStore of Foo's own
  # store (the primary) and its fallback's (the secondary), and the flags move the data.
  describe "an instance migrating with a MultiStore" do
    let!(:foo) do
      stub_const("Gitlab::Redis::Foo", Class.new(described_class) do
        def self.config_fallback
          Gitlab::Redis::SharedState
        end

        def self.redis
          Gitlab::Redis::MultiStore.new(params, config_fallback.params, instance_name)
        end
      end)
    end

    before do
      write_config("redis.foo.yml", "test" => primary_server.url)
      write_config("redis.shared_state.yml", "test" => secondary_server.url)
    end

    it "lends MultiStores named after the instance from .pool and .with" do
      foo.with do |redis|
        expect(redis).to be_a(Gitlab::Redis::MultiStore)
        expect(redis.instance_name).to eq("foo")
      end
    end

    it "writes to the fallback (secondary) store only, while no flag is on" do
      foo.with { |redis| redis.set("migrating", "1") }

      expect(secondary_server.client.get("migrating")).to eq("1")
      expect(primary_server.client.get("migrating")).to be_nil
    end

    # The flags are named after instance_name; their ENV overrides stand in for Feature flags.
    it "writes to both stores with dual-write on, and reads the primary once it is the default" do
      ENV["GITLAB_MULTISTORE_USE_PRIMARY_AND_SECONDARY_STORES_FOR_FOO"] = "true"
      foo.with { |redis| redis.set("migrating", "1") }

      expect(secondary_server.client.get("migrating")).to eq("1")
      expect(primary_server.client.get("migrating")).to eq("1")

      ENV["GITLAB_MULTISTORE_USE_PRIMARY_STORE_AS_DEFAULT_FOR_FOO"] = "true"
      primary_server.client.set("migrating", "from-primary")
      expect(foo.with { |redis| redis.get("migrating") }).to eq("from-primary")
    end

    it "uses the fallback's server for both stores while Foo itself is unconfigured" do
      File.delete(config_path("redis.foo.yml"))

      foo.with do |redis|
        expect(redis.same_store?).to be(true)
        redis.set("not-yet-split", "1")
      end

      expect(secondary_server.client.get("not-yet-split")).to eq("1")
    end
  end

  describe "secrets" do
    let(:password) { "s3cr3t-password" }

    before do
      write_config("redis.foo.yml", "test" => {
                     "url" => "redis://bob:#{password}@redis.example.com:6380/2",
                     "sentinel_password" => "sentinel-#{password}",
                     "sentinels" => [{ "host" => "sentinel1", "password" => "own-#{password}" }]
                   })
    end

    it "are redacted in safe_url and redacted_params, but still in params for redis-rb" do
      expect(foo.safe_url).to eq("redis://bob:*****@redis.example.com:6380/2")
      expect(foo.redacted_params).to eq(
        host: "redis.example.com", name: "redis.example.com", port: 6380, db: 2, username: "bob", password: "*****",
        sentinel_password: "*****", sentinels: [{ host: "sentinel1", port: 26379, password: "*****" }]
      )
      expect(foo.params[:password]).to eq(password)
    end

    it "never appear in the inspect of the class or of an instance" do
      instance = foo.new

      expect(instance.inspect).to eq("#<Gitlab::Redis::Foo env=test url=redis://bob:*****@redis.example.com:6380/2 " \
                                     "config=#{config_path('redis.foo.yml')}>")
      expect(instance.to_s).to eq(instance.inspect)
      expect([foo.inspect, foo.to_s]).to all(eq("Gitlab::Redis::Foo"))
    end

    it "are redacted from a TLS client key, and from URLs nested in params" do
      key = OpenSSL::PKey::EC.generate("prime256v1")
      write_config("client.key", key.private_to_pem)
      write_config("redis.foo.yml", "test" => {
                     "cluster" => ["redis://:#{password}@node1:7000"],
                     "ssl_params" => { "key_file" => "config/client.key" }
                   })

      expect(foo.redacted_params).to eq(cluster: ["redis://:*****@node1:7000"], ssl_params: { key: "*****" }, db: 0)
    end

    it "do not leak through the inspect of an instance whose configuration is broken" do
      path = write_config("redis.foo.yml", "test: redis://:#{password} oops@host\n")
      expect(foo.new.inspect).to eq("#<Gitlab::Redis::Foo env=test url=<invalid URL> config=#{path}>")

      write_config("redis.foo.yml", "test: [redis://:#{password}@host\n")
      expect(foo.new.inspect).to eq("#<Gitlab::Redis::Foo env=test unusable configuration (Gitlab::Redis::Wrapper::ConfigError)>")
    end

    it "do not leak through the pool or the connections it lends" do
      server = dedicated_redis_server("--requirepass", password)
      write_config("redis.foo.yml", "test" => "redis://:#{password}@127.0.0.1:#{server.port}")

      migrating = stub_const("Gitlab::Redis::Migrating", Class.new(described_class) do
        def self.config_fallback = Gitlab::Redis::Foo
        def self.redis = Gitlab::Redis::MultiStore.new(params, config_fallback.params, instance_name)
      end)

      connection = foo.with { |redis| redis.tap(&:ping) }
      multi_store = migrating.with { |redis| redis.tap(&:ping) }

      expect([connection, foo.pool, multi_store, migrating.pool].map(&:inspect)).to all(include(server.port.to_s))
      expect([connection, foo.pool, multi_store, migrating.pool].map(&:inspect)).not_to include(a_string_including(password))
    ensure
      migrating&.reset_pool!
    end

    it "do not leak through the inspect of where the configuration was found" do
      expect(foo.config_source.inspect).to eq("#<Gitlab::Redis::Wrapper::Source #{config_path('redis.foo.yml')}>")
    end

    it "are replaced whole in a URL that does not parse" do
      expect(described_class.redact_url("redis://:#{password} x@host")).to eq("<invalid URL>")
      expect(described_class.redact_url("redis://host:6379")).to eq("redis://host:6379")
    end
  end

  # A redis-server in Sentinel mode monitoring `mymaster`, stopped after the example.
  def start_sentinel(master_port:, master_password: nil, requirepass: nil)
    port = RedisServers.free_port
    dir = Dir.mktmpdir("gitlab-redis-sentinel-")
    config = File.join(dir, "sentinel.conf")
    File.write(config, <<~CONF)
      port #{port}
      bind 127.0.0.1
      dir #{dir}
      sentinel monitor mymaster 127.0.0.1 #{master_port} 1
      #{"sentinel auth-pass mymaster #{master_password}" if master_password}
      #{"requirepass #{requirepass}" if requirepass}
    CONF
    pid = Process.spawn(RedisServer.binary, config, "--sentinel", out: File::NULL, err: File::NULL, pgroup: true)
    (@sentinels ||= []) << [pid, dir]
    wait_for_port(port)
    port
  end

  def wait_for_port(port)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    begin
      TCPSocket.new("127.0.0.1", port).close
    rescue Errno::ECONNREFUSED
      raise "sentinel on port #{port} did not start" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.02
      retry
    end
  end

  after do
    (@sentinels || []).each do |pid, dir|
      Process.kill(:KILL, pid)
      Process.wait(pid)
      FileUtils.remove_entry(dir)
    end
  end
end
