# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Reads a MultiStore's two feature flags before each call:
      #   use_primary_and_secondary_stores_for_<name>  -- dual-write
      #   use_primary_store_as_default_for_<name>      -- the primary answers callers
      # through the application's callable (`call(flag)` or `enabled?(flag)`, flag as a Symbol).
      # An ENV variable per flag overrides the callable, for an emergency rollback without a
      # deploy: GITLAB_MULTISTORE_USE_PRIMARY_AND_SECONDARY_STORES_FOR_<NAME>=true|false.
      #
      # Off whenever the answer cannot be had: no callable configured, the callable raising (the
      # flag table does not exist yet during boot or migrations), or the callable calling back
      # into this store (a flag cache kept in the Redis being migrated) -- GitLab hit that loop.
      class FeatureFlags
        DUAL_WRITE = GitlabMultistore::NativeStore::FLAG_DUAL_WRITE
        PRIMARY_DEFAULT = GitlabMultistore::NativeStore::FLAG_PRIMARY_DEFAULT
        STRICT = GitlabMultistore::NativeStore::FLAG_STRICT
        TRUE_VALUES = %w[1 true yes on].freeze
        FALSE_VALUES = %w[0 false no off].freeze

        attr_reader :dual_write_flag, :primary_default_flag

        # @param cache_seconds [Numeric] reuse the flags read for this long (0, the default: read
        #   them on every call, so a flip takes effect on the very next command)
        def initialize(instance_name, callable:, strict:, cache_seconds: 0)
          underscored = self.class.underscore(instance_name)
          @dual_write_flag = :"use_primary_and_secondary_stores_for_#{underscored}"
          @primary_default_flag = :"use_primary_store_as_default_for_#{underscored}"
          @dual_write_env = env_name(@dual_write_flag)
          @primary_default_env = env_name(@primary_default_flag)
          @callable = callable
          @strict = strict
          @guard_key = :"__gitlab_multistore_flags_#{object_id}"
          @cache_seconds = Float(cache_seconds)
          @cached_bits = nil
          @cached_until = 0.0
        end

        def dual_write?
          enabled?(@dual_write_flag, @dual_write_env)
        end

        def primary_default?
          enabled?(@primary_default_flag, @primary_default_env)
        end

        def strict?
          @strict.nil? ? MultiStore.strict : @strict
        end

        # The flags as the bit set the native core takes.
        def bits
          return read_bits unless @cache_seconds.positive?

          now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          return @cached_bits if @cached_bits && now < @cached_until

          # Threads racing here each read the flags and store a correct value.
          @cached_bits = read_bits
          @cached_until = now + @cache_seconds
          @cached_bits
        end

        # As ActiveSupport's `underscore` (GitLab builds the flag names with it): "SharedState"
        # and "shared_state" name the same flags; anything not alphanumeric becomes "_".
        def self.underscore(name)
          name.to_s
              .gsub(/([A-Z\d]+)([A-Z][a-z])/, '\1_\2')
              .gsub(/([a-z\d])([A-Z])/, '\1_\2')
              .gsub(/[^A-Za-z0-9]+/, "_")
              .downcase
        end

        def self.env_name(flag)
          "GITLAB_MULTISTORE_#{flag.to_s.upcase}"
        end

        private

        def read_bits
          bits = 0
          bits |= DUAL_WRITE if dual_write?
          bits |= PRIMARY_DEFAULT if primary_default?
          bits |= STRICT if strict?
          bits
        end

        def env_name(flag)
          self.class.env_name(flag)
        end

        def enabled?(flag, env_name)
          override = ENV[env_name]
          if override
            value = override.strip.downcase
            return true if TRUE_VALUES.include?(value)
            return false if FALSE_VALUES.include?(value)
          end

          ask_callable(flag)
        end

        def ask_callable(flag)
          callable = @callable || MultiStore.feature_flags
          return false unless callable
          return false if Thread.current[@guard_key]

          begin
            Thread.current[@guard_key] = true
            answer = callable.respond_to?(:call) ? callable.call(flag) : callable.enabled?(flag)
            answer ? true : false
          rescue StandardError
            false
          ensure
            Thread.current[@guard_key] = nil
          end
        end
      end
    end
  end
end
