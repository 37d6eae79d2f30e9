# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Reported (through the configured reporter), not raised, unless stated otherwise.
      Error = Class.new(StandardError)
      ReadFromPrimaryError = Class.new(Error)
      MethodMissingError = Class.new(Error)
      PipelinedDiffError = Class.new(Error)
      # Raised: `with_readonly_pipeline` blocks do not nest.
      NestedReadonlyPipelineError = Class.new(Error)
      # Raised: `backfill` once the primary is the default store (it would bring back onto the
      # store callers read keys they have deleted since).
      BackfillAfterSwitchError = Class.new(Error)
      # Raised: a command a namespaced store (a Redis::Namespace) cannot run inside its
      # namespace -- FLUSHDB, DBSIZE, RANDOMKEY … act on the whole database -- refused before
      # anything is sent (redis-namespace refuses or warns about the same ones).
      NamespaceError = Class.new(Error)
    end
  end
end
