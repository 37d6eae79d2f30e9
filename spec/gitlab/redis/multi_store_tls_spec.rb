# frozen_string_literal: true

require "openssl"
require "tmpdir"
require "timeout"

# TLS (rediss://) against a local redis-server started with its TLS port, with a CA and
# certificates made for the occasion.
RSpec.describe Gitlab::Redis::MultiStore, "over TLS" do
  before(:all) do
    @dir = Dir.mktmpdir("gitlab-multistore-tls-")
    @ca_key = OpenSSL::PKey::RSA.new(2048)
    @ca = certificate("gitlab-multistore test CA", @ca_key, ca: true)
    server_key = OpenSSL::PKey::RSA.new(2048)
    server_cert = certificate("127.0.0.1", server_key, issuer: @ca, issuer_key: @ca_key)
    @client_key = OpenSSL::PKey::RSA.new(2048)
    @client_cert = certificate("client", @client_key, issuer: @ca, issuer_key: @ca_key)
    files = { "ca.crt" => @ca.to_pem, "server.crt" => server_cert.to_pem, "server.key" => server_key.to_pem }
    files.each { |name, pem| File.write(File.join(@dir, name), pem) }
    @tls_port = RedisServers.free_port
    @server = RedisServer.new("--tls-port", @tls_port.to_s, "--tls-cert-file", File.join(@dir, "server.crt"),
                              "--tls-key-file", File.join(@dir, "server.key"),
                              "--tls-ca-cert-file", File.join(@dir, "ca.crt"), "--tls-auth-clients", "optional")
  end

  after(:all) do
    @server&.cleanup
    FileUtils.remove_entry(@dir) if @dir
  end

  def certificate(name, key, ca: false, issuer: nil, issuer_key: nil)
    cert = OpenSSL::X509::Certificate.new
    cert.version = 2
    cert.serial = rand(1 << 32)
    cert.subject = OpenSSL::X509::Name.parse("/CN=#{name}")
    cert.issuer = issuer ? issuer.subject : cert.subject
    cert.public_key = key.public_key
    cert.not_before = Time.now - 60
    cert.not_after = Time.now + 3600
    extensions = OpenSSL::X509::ExtensionFactory.new
    extensions.subject_certificate = cert
    extensions.issuer_certificate = issuer || cert
    cert.add_extension(extensions.create_extension("basicConstraints", ca ? "CA:TRUE" : "CA:FALSE", true))
    cert.add_extension(extensions.create_extension("subjectAltName", "IP:127.0.0.1")) unless ca
    cert.sign(issuer_key || key, OpenSSL::Digest.new("SHA256"))
    cert
  end

  let(:tls_url) { "rediss://127.0.0.1:#{@tls_port}/0" }
  let(:ssl_params) { { ca_file: File.join(@dir, "ca.crt") } }

  it "talks to a TLS redis-server, verifying its certificate against the given CA" do
    store = described_class.new(primary_server.url, { url: tls_url, ssl_params: ssl_params }, "tls")

    expect(store.set("k", "over-tls")).to eq("OK")
    expect(store.get("k")).to eq("over-tls")
    expect(@server.client.get("k")).to eq("over-tls")
    expect(store.inspect).to include("rediss://127.0.0.1:#{@tls_port}/0")
  end

  it "answers like redis-rb over the same TLS connection settings" do
    plain = Redis.new(url: tls_url, ssl_params: ssl_params)
    store = described_class.new(primary_server.url, { url: tls_url, ssl_params: ssl_params }, "tls")

    expect(store.hset("h", "f", "v")).to eq(plain.hset("h2", "f", "v"))
    expect(store.hgetall("h")).to eq(plain.hgetall("h2"))
    expect { store.lpush("h", "x") }.to raise_error(Redis::CommandError, plain.then do |r|
      r.lpush("h2", "x")
    rescue Redis::CommandError => e
      e.message
    end)
  end

  it "presents a client certificate given as OpenSSL objects" do
    params = ssl_params.merge(cert: @client_cert, key: @client_key)
    store = described_class.new(primary_server.url, { url: tls_url, ssl_params: params }, "tls")

    expect(store.ping).to eq("PONG")
  end

  it "refuses a server whose certificate it cannot verify" do
    store = described_class.new(primary_server.url, tls_url, "tls")

    expect { store.ping }.to raise_error(Redis::CannotConnectError, /127\.0\.0\.1:#{@tls_port}/)
  end

  it "skips verification when told to (verify_mode NONE)" do
    params = { verify_mode: OpenSSL::SSL::VERIFY_NONE }
    store = described_class.new(primary_server.url, { url: tls_url, ssl_params: params }, "tls")

    expect(store.ping).to eq("PONG")
  end

  it "accepts a certificate for another name with verify_hostname: false, as redis-rb does, and not without" do
    by_name = "rediss://localhost:#{@tls_port}/0" # the certificate names 127.0.0.1 only
    checked = described_class.new(primary_server.url, { url: by_name, ssl_params: ssl_params }, "tls")
    unchecked = described_class.new(primary_server.url,
                                    { url: by_name, ssl_params: ssl_params.merge(verify_hostname: false) }, "tls")

    expect { checked.ping }.to raise_error(Redis::CannotConnectError, /NotValidForName|certificate/i)
    expect(unchecked.ping).to eq("PONG")
    expect(Redis.new(url: by_name, ssl_params: ssl_params.merge(verify_hostname: false)).ping).to eq("PONG")
  end

  it "still verifies the chain with verify_hostname: false" do
    store = described_class.new(primary_server.url, { url: tls_url, ssl_params: { verify_hostname: false } }, "tls")

    expect { store.ping }.to raise_error(Redis::CannotConnectError) # no CA given: the test CA is not trusted
  end

  it "trusts the system's CA certificates when no ca_file is given, as OpenSSL's defaults do (SSL_CERT_FILE)" do
    previous = ENV.fetch("SSL_CERT_FILE", nil)
    ENV["SSL_CERT_FILE"] = File.join(@dir, "ca.crt")
    store = described_class.new(primary_server.url, tls_url, "tls")

    expect(store.ping).to eq("PONG")
  ensure
    ENV["SSL_CERT_FILE"] = previous
  end

  it "refuses ssl_params[:cert_store], which it cannot read, instead of ignoring it" do
    params = { cert_store: OpenSSL::X509::Store.new }

    expect { described_class.new(primary_server.url, { url: tls_url, ssl_params: params }, "tls") }
      .to raise_error(ArgumentError, /cert_store.*ca_file or ca_path/)
  end

  it "bounds a hung TLS handshake by connect_timeout: a non-default store hanging does not hold up a write" do
    flags = ->(flag) { flag.to_s.start_with?("use_primary_and_secondary") }
    reports = []
    options = { url: tls_url, ssl_params: ssl_params, connect_timeout: 0.3, read_timeout: 0.3 }
    store = described_class.new(options, primary_server.url, "tls", feature_flags: flags,
                                                                     on_error: ->(e, _) { reports << e })
    Process.kill(:STOP, @server.pid) # TCP still accepted by the kernel, TLS never answered
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    begin
      expect(store.set("k", "v")).to eq("OK")
    ensure
      Process.kill(:CONT, @server.pid)
    end

    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 1.5
    expect(reports.map(&:class)).to include(Redis::CannotConnectError)
    expect(primary_server.client.get("k")).to eq("v")
  end

  it "lets Timeout interrupt a TLS handshake that would wait for ever (connect_timeout 0)" do
    store = described_class.new(primary_server.url, { url: tls_url, ssl_params: ssl_params, connect_timeout: 0 }, "tls")
    Process.kill(:STOP, @server.pid)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    begin
      expect { Timeout.timeout(0.3) { store.call(:ping) } }.to raise_error(Timeout::Error)
    ensure
      Process.kill(:CONT, @server.pid)
    end

    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 1.5
  end

  it "lets Timeout interrupt a blocking command waiting on a TLS store" do
    store = described_class.new(primary_server.url, { url: tls_url, ssl_params: ssl_params }, "tls")
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    expect { Timeout.timeout(0.3) { store.blpop("nothing", timeout: 0) } }.to raise_error(Timeout::Error)
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 1.5
    expect(store.lpush("nothing", "x")).to eq(1) # the interrupted connection was not reused half-read
    expect(store.blpop("nothing", timeout: 1)).to eq(%w[nothing x])
  end
end
