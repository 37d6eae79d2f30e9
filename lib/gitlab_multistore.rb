# frozen_string_literal: true

# redis-rb comes first: the native extension looks up its exception classes when it loads.
require "redis"
require "monitor"
require "gitlab_multistore/version"
require "gitlab_multistore/gitlab_multistore"
require "gitlab/redis/multi_store"
