# frozen_string_literal: true

require_relative "lib/gitlab_multistore/version"

Gem::Specification.new do |spec|
  spec.name = "gitlab_multistore"
  spec.version = GitlabMultistore::VERSION
  spec.summary = "Move a partition of Redis data to a new Redis with no downtime: GitLab's MultiStore, with a Rust core"
  spec.description = <<~TEXT
    Gitlab::Redis::MultiStore is a drop-in redis-rb 4.8 client that routes each command to an
    old and a new Redis under feature flags, so a Rails application can migrate one functional
    partition of its Redis data with no downtime and rollback at any step. Connections,
    routing and metrics run in a native Rust core that releases the GVL during I/O.
  TEXT
  spec.license = "MIT"
  spec.authors = ["gitlab_multistore developers"]
  spec.homepage = "https://gitlab.com/gitlab-org/gitlab"
  spec.required_ruby_version = ">= 3.1"

  spec.files = Dir[
    "lib/**/*.rb", "exe/*", "ext/**/*.{rb,rs,toml}", "src/**/*.rs",
    "Cargo.toml", "Cargo.lock", "README.md", "LICENSE", "prometheus/**/*.{yml,json}"
  ]
  spec.bindir = "exe"
  spec.executables = Dir["exe/*"].map { |path| File.basename(path) }
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/gitlab_multistore/extconf.rb"]

  spec.add_dependency "redis", "~> 4.8"
  spec.add_dependency "connection_pool", ">= 2.2"
end
