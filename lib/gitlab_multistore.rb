# frozen_string_literal: true

# The native extension comes first: the Ruby side takes the flag bits from it. It looks the
# exception classes it raises up once they are all defined (below), not when it first raises
# one: that lookup, racing with another thread's, could hang the process.
require "redis"
require "monitor"
require "gitlab_multistore/version"
require "gitlab_multistore/gitlab_multistore"
require "gitlab/redis/multi_store"
require "gitlab/redis/wrapper"
require "gitlab/redis/multi_store_wrapper"

GitlabMultistore::NativeStore.resolve_error_classes
