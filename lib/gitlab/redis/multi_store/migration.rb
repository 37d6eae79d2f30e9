# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Backfill and verify: the tools that make the switch safe for keys dual-writes never touch.
      # Both stream the secondary with SCAN, one page per native step (the GVL released during
      # each), so memory stays flat however many keys there are and the caller sees progress.
      module Migration
        # Where a backfill stands. `rate` is keys scanned per second so far; `eta` in seconds.
        # `held_back`: seconds the backfill waited for the secondary's latency (see max_latency:);
        # `holding_back`: whether it was waiting just before this page.
        BackfillProgress = Struct.new(:scanned, :copied, :already_present, :expired, :failed, :undone,
                                      :recopied, :left_different, :total, :done, :elapsed, :held_back,
                                      :holding_back, keyword_init: true) do
          def done? = done

          # Nothing failed: every key was copied, already there, or gone before it could be.
          def ok? = failed.zero?
        end

        VerifyProgress = Struct.new(:checked, :agree, :missing_on_primary, :different, :only_on_primary, :repaired,
                                    :repair_failed, :unreadable, :total, :readiness, :in_agreement, :done,
                                    :elapsed, keyword_init: true) do
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

        # Copies every key of the secondary that the primary lacks (DUMP, PEXPIRETIME, RESTORE
        # without REPLACE), keeping TTLs, never overwriting a newer dual-written value and never
        # resurrecting a key deleted meanwhile; a key a write changed in place during its copy is
        # copied again (while the secondary is the default store). Safe while traffic flows.
        #
        # @param match [String] only keys matching this glob
        # @param count [Integer] keys per SCAN page (one pipelined batch)
        # @param rate [Numeric] at most this many keys scanned per second
        # @param checkpoint [String] a file to save the progress to after every page (see
        #   Checkpoint); removed when the backfill finishes
        # @param resume [Boolean] continue from the checkpoint's progress, if it has any
        # @param max_latency [Numeric] seconds: before each page the secondary is pinged, and
        #   while its round trip is above this the backfill waits (the pause doubling up to a
        #   second), so a production Redis keeps its latency; `held_back` counts the waiting
        # @yieldparam progress [BackfillProgress] after each page
        # @return [BackfillProgress] the final report
        def backfill(match: nil, count: 1000, rate: nil, checkpoint: nil, resume: false, max_latency: nil)
          refuse_backfill_after_switch
          raise ArgumentError, "resume: true needs a checkpoint: file" if resume && !checkpoint

          saved = checkpoint && Checkpoint.new(checkpoint, checkpoint_identity("backfill", match))
          progress = resume ? saved.load : nil
          token = @native._backfill_token
          native = GitlabMultistore::NativeBackfill.new(@native, match, Integer(count), @flags.bits, progress)
          pacing = max_latency && LatencyPacing.new(@native, Float(max_latency))
          # The flags are looked at again before every page: switched meanwhile, the backfill stops.
          report = run_steps(native, BackfillProgress, rate, scanned_before: progress ? progress[:report][:scanned] : 0,
                                                             pacing: pacing, before_step: -> { refuse_backfill_after_switch(running: true) }) do |page|
            saved&.save(native._checkpoint) unless page.done?
            yield page if block_given?
          end
          finished = true
          saved&.remove
          # A full, clean copy has copied again what a restarted store lost. It does not show the
          # stores agree (it never overwrites a key the primary has): only a full verify does. A
          # resumed one may have skipped keys a restart since the kill took away, and one that ran
          # across a restart keys it had copied before it: neither counts.
          @native._acknowledge_backfill(token) if report.ok? && match.nil? && progress.nil?
          report
        ensure
          # Stopped by an error, an interrupt or a switch: the pages a step wrote before it failed
          # are in the backfill's position, and their keys still due a second look with them, so
          # that a resumed run looks at them rather than taking them for keys already there.
          save_after_failure(saved, native) unless finished
        end

        # Compares the stores key by key (type, a digest of the value, TTL within a second):
        # keys missing on the primary, different, or only on the primary, and the readiness (share
        # of the secondary's keys the primary holds identically).
        #
        # @param match [String] only keys matching this glob
        # @param sample [Integer] check this many random keys instead of all (no primary-only scan)
        # @param repair [Boolean] copy each differing key from the store that holds every write --
        #   the default store, or after a disturbance the store known to have missed nothing
        #   (`migration_status[:repair_from]`) -- to the other (RESTORE REPLACE, or DEL where that
        #   store has no such key), and check them again
        # @param checkpoint [String] a file to save the progress to after every page (not with
        #   sample:); removed when the verify finishes
        # @param resume [Boolean] continue from the checkpoint's progress, if it has any (its
        #   result then does not count for migration_status: what it compared may have changed)
        # @yieldparam progress [VerifyProgress] after each page
        # @return [VerifyProgress] the final report; `in_agreement?` when the stores agree
        def verify(match: nil, sample: nil, repair: false, count: 1000, checkpoint: nil, resume: false)
          raise ArgumentError, "resume: true needs a checkpoint: file" if resume && !checkpoint
          raise ArgumentError, "a verify of a random sample cannot be resumed: it has no checkpoint" if checkpoint && sample

          # nil while dual-write is off: writes then reach the default store only, and no verify
          # can vouch for the other.
          token = @native._verify_token(@flags.bits)
          saved = checkpoint && Checkpoint.new(checkpoint, checkpoint_identity("verify", match))
          progress = resume ? saved.load : nil
          native = GitlabMultistore::NativeVerify.new(@native, match, Integer(count), sample && Integer(sample),
                                                      repair ? true : false, @flags.bits, progress)
          report = run_steps(native, VerifyProgress, nil) do |page|
            saved&.save(native._checkpoint) unless page.done?
            yield page if block_given?
          end
          saved&.remove
          # What a resumed verify compared before it stopped may have changed since: it tells how
          # the stores stand, but cannot clear "full verify needed" or make them safe to switch.
          token = nil if progress
          full = match.nil? && sample.nil?
          # Clears "full verify needed" only if no store restart, unrecorded miss or dual-write
          # pause happened since this verify began.
          counted = full && report.in_agreement? && !token.nil? && @native._acknowledge_verify(token)
          # Kept for every MultiStore of the partition in this process: a pool gives one answer.
          @native._record_verify(report.readiness.to_f, report.in_agreement?, full, counted ? true : false, @client.db)
          report
        end

        # Is it safe to switch the default store to the primary? A yes needs: both stores'
        # circuit breakers closed, no write failure on the other store in the last 5 minutes, the re-sync
        # journal empty (and nothing it could not record), no store restart since the last full
        # backfill, and a full verify in agreement run by one of the process's MultiStores of
        # this partition (instance name and stores), since what it vouched for.
        #
        # @return [Hash] :safe_to_switch, :reasons (why not), and the facts behind them
        def migration_status
          # Each store is asked for its run_id first: a restart no call has run into yet counts.
          status = @native._status(@flags.bits)
          reasons = []
          reasons << "dual-write is off: writes reach the default store only" unless @flags.dual_write?
          # A store behind an open breaker is not asked anything, its run_id included: a restart
          # of it would go unseen. Either store's, not only the primary's: after the switch the
          # secondary is the other store, and rolling back relies on it.
          status[:breaker].each do |store, state|
            reasons << "the #{store}'s circuit breaker is #{state}" unless state == :closed
          end
          if status[:recent_write_failures].positive?
            reasons << "#{status[:recent_write_failures]} write failures on the non-default store in the last 5 minutes"
          end
          reasons << "#{status[:journal_keys]} keys wait for re-sync" if status[:journal_keys].positive?
          status[:requests_in_doubt].each do |store, count|
            next if count.zero?

            reasons << "#{count} connections to the #{store} store carry commands that timed out and may still run there"
          end
          if status[:full_verify_needed]
            reasons << "a store restarted or some missed writes could not be journaled since the last full verify: " \
                       "run verify with repair (it copies from the #{status[:repair_from]})"
          end
          if status[:backfill_needed]
            reasons << if use_primary_store_as_default?
                         "a store restarted since the last full backfill or verify: run verify with repair"
                       else
                         "a store restarted since the last full backfill: backfill again"
                       end
          end
          last_verify = @native._last_verify&.then { |standing| standing.merge(at: Time.at(standing[:at])) }
          if last_verify.nil? || !last_verify[:full]
            reasons << "no full verify has run"
          elsif !last_verify[:in_agreement]
            reasons << format("the last verify found the stores different (readiness %.2f%%)", last_verify[:readiness])
          elsif last_verify[:db] != @client.db
            reasons << "the last full verify ran in database #{last_verify[:db]}; the MultiStore is on #{@client.db} now"
          elsif !last_verify[:counted]
            reasons << "the last full verify cannot vouch for the stores: dual-write was off, a store restarted or " \
                       "writes were missed while it ran"
          end
          status.merge(last_verify: last_verify, safe_to_switch: reasons.empty?, reasons: reasons)
        end

        private

        # What a checkpoint is for: these stores (by URL, without password), this database, this
        # pattern.
        def checkpoint_identity(command, match)
          {
            "command" => command, "instance_name" => instance_name,
            "primary" => @native._store_id(:primary), "secondary" => @native._store_id(:secondary),
            "db" => @client.db, "match" => match
          }
        end

        # Holds a backfill back while the secondary answers slower than `max_latency` seconds,
        # measured on its own pings between pages.
        class LatencyPacing
          LONGEST_PAUSE = 1.0

          attr_reader :held_back, :holding_back

          def initialize(native, max_latency)
            @native = native
            @max_latency = max_latency
            @held_back = 0.0
            @holding_back = false
          end

          def wait_for_latency
            pause = 0.01
            @holding_back = false
            while @native._round_trip(:secondary) > @max_latency
              @holding_back = true
              sleep pause
              @held_back += pause
              pause = [pause * 2, LONGEST_PAUSE].min
            end
          end
        end

        def save_after_failure(saved, native)
          saved&.save(native._checkpoint) if native
        rescue StandardError => e
          # The failure being raised matters more than the checkpoint's.
          MultiStore.logger.warn("gitlab_multistore: could not save the backfill checkpoint after a failure: " \
                                 "#{e.class}: #{e.message}")
        end

        def refuse_backfill_after_switch(running: false)
          return unless use_primary_store_as_default?

          raise BackfillAfterSwitchError,
                "the primary #{running ? 'became' : 'is'} the default store: a backfill would copy onto it keys deleted " \
                "since the switch#{running ? ', so it stopped (its checkpoint, if any, is kept)' : ''}; bring the stores " \
                "in line with verify(repair: true), which copies from the default store"
        end

        # Each step gets the flags as they are then: they may change while a backfill or verify runs.
        def run_steps(native, progress_class, rate, scanned_before: 0, pacing: nil, before_step: nil)
          started = monotonic
          loop do
            pacing&.wait_for_latency
            page_started = monotonic
            before_step&.call
            report = native._step(@native, @flags.bits)
            report = report.merge(held_back: pacing.held_back, holding_back: pacing.holding_back) if pacing
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
