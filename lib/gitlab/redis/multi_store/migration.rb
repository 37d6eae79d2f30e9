# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Backfill and verify: the tools that make the switch safe for keys dual-writes never touch.
      # Both stream the secondary with SCAN, one page per native step (the GVL released during
      # each), so memory stays flat however many keys there are and the caller sees progress.
      module Migration
        # Where a backfill stands. `rate` is keys scanned per second so far; `eta` in seconds.
        BackfillProgress = Struct.new(:scanned, :copied, :already_present, :expired, :failed, :undone,
                                      :total, :done, :elapsed, keyword_init: true) do
          def done? = done

          # Nothing failed: every key was copied, already there, or gone before it could be.
          def ok? = failed.zero?
        end

        VerifyProgress = Struct.new(:checked, :agree, :missing_on_primary, :different, :only_on_primary, :repaired,
                                    :repair_failed, :total, :readiness, :in_agreement, :done, :elapsed,
                                    keyword_init: true) do
          def done? = done

          def in_agreement? = in_agreement

          alias_method :scanned, :checked
        end

        module ProgressMath
          def rate
            elapsed.positive? ? scanned / elapsed : 0.0
          end

          def fraction
            return 1.0 if done

            total.positive? ? [scanned.to_f / total, 1.0].min : 0.0
          end

          def eta
            rate.positive? ? [(total - scanned) / rate, 0].max : nil
          end
        end
        [BackfillProgress, VerifyProgress].each { |klass| klass.include(ProgressMath) }

        # Copies every key of the secondary that the primary lacks (DUMP, PTTL, RESTORE without
        # REPLACE), keeping TTLs, never overwriting a newer dual-written value and never
        # resurrecting a key deleted meanwhile. Safe while traffic flows.
        #
        # @param match [String] only keys matching this glob
        # @param count [Integer] keys per SCAN page (one pipelined batch)
        # @param rate [Numeric] at most this many keys scanned per second
        # @yieldparam progress [BackfillProgress] after each page
        # @return [BackfillProgress] the final report
        def backfill(match: nil, count: 1000, rate: nil)
          native = GitlabMultistore::NativeBackfill.new(@primary_options, @secondary_options, match, Integer(count))
          run_steps(native, BackfillProgress, rate) { |progress| yield progress if block_given? }
        end

        # Compares the stores key by key (type, a digest of the value, TTL within a second):
        # keys missing on the primary, different, or only on the primary, and the readiness (share
        # of the secondary's keys the primary holds identically).
        #
        # @param match [String] only keys matching this glob
        # @param sample [Integer] check this many random keys instead of all (no primary-only scan)
        # @param repair [Boolean] copy each differing key from the secondary (RESTORE REPLACE),
        #   delete keys only on the primary, and check them again
        # @yieldparam progress [VerifyProgress] after each page
        # @return [VerifyProgress] the final report; `in_agreement?` when the stores agree
        def verify(match: nil, sample: nil, repair: false, count: 1000)
          native = GitlabMultistore::NativeVerify.new(@primary_options, @secondary_options, match, Integer(count),
                                                      sample && Integer(sample), repair ? true : false)
          run_steps(native, VerifyProgress, nil) { |progress| yield progress if block_given? }
        end

        private

        def run_steps(native, progress_class, rate)
          started = monotonic
          scanned_before = 0
          loop do
            page_started = monotonic
            report = native._step
            progress = progress_class.new(**report, elapsed: monotonic - started)
            if rate
              scanned_now = progress.scanned
              # Pace pages -- the last one too -- so the average stays at or under `rate` keys/s.
              wait = (scanned_now - scanned_before) / rate.to_f - (monotonic - page_started)
              sleep(wait) if wait.positive?
              scanned_before = scanned_now
              progress.elapsed = monotonic - started
            end
            yield progress
            return progress if progress.done?
          end
        end

        def monotonic
          Process.clock_gettime(Process::CLOCK_MONOTONIC)
        end
      end
    end
  end
end
