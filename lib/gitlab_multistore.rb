# frozen_string_literal: true

# redis-rb and the MultiStore's error classes come first: the native extension looks up the
# exception classes it raises when it loads.
require "redis"
require "monitor"
require "gitlab_multistore/version"
require "gitlab/redis/multi_store"
require "gitlab/redis/wrapper"
require "gitlab/redis/multi_store_wrapper"
require "gitlab_multistore/gitlab_multistore"
