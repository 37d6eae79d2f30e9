# frozen_string_literal: true

require "openssl"
require "tmpdir"

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
end
