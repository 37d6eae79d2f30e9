# frozen_string_literal: true

module GitlabMultistore
  # Polls until a throw-away deployment (a cluster, sentinels) reaches the state asked for.
  module Waiting
    def wait_until(what, timeout: 20)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      until yield
        raise "timed out waiting for #{what}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.05
      end
    end
  end
end
