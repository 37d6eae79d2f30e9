# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Stands where redis-rb's `Redis::Client` stands behind a `Redis`: redis-rb's command
      # modules call `call`, `call_with_timeout`, `call_pipeline`, `call_loop`, `db`, … on it.
      # One instance serves every thread; the native core keeps a pool of connections, and what
      # must stay on one connection (WATCH … EXEC, MULTI without a block, a subscription) is
      # pinned to the calling thread (fiber, as `Thread#[]` is) through a native session.
      class Client
        QUEUED = "QUEUED"
        REUSABLE_AFTER_LOOP = %w[subscribe psubscribe].freeze
        SUBSCRIBING = %w[subscribe psubscribe ssubscribe].freeze
        UNSUBSCRIBED = %w[unsubscribe punsubscribe sunsubscribe].freeze
        TRANSACTION_CONTROL = %i[multi exec discard watch unwatch].freeze
        # redis-rb's reply-to-Hash block (HGETALL, CONFIG GET …): the native side builds the Hash.
        HASHIFY = ::Redis::Commands::Hashify

        # What one thread has pinned: a session, a pipeline recording calls made on the
        # MultiStore itself, the subscribed client of a running subscription, and whether a
        # `with_readonly_pipeline` block is running.
        # `queued` collects the commands of a block-less MULTI, replayed on the non-default store
        # after EXEC.
        ThreadState = Struct.new(:session, :recorder, :subscribed_client, :readonly, :queued)

        # @param flags [FeatureFlags] read before each call: they decide the route
        def initialize(native, flags)
          @native = native
          @flags = flags
          @state_key = :"__gitlab_multistore_#{object_id}"
          @pins = {}.compare_by_identity
        end

        # @param state [ThreadState, nil] this thread's state when the caller already looked it up
        def call(command, state = thread_state, &block)
          if block.equal?(HASHIFY) && !state&.session
            reply = @native._call_hashify(command, @flags.bits)
            return reply.is_a?(Hash) ? reply : block.call(reply)
          end

          reply =
            if state&.session
              on_pinned(state, [command]) { state.session._call(command) }
            else
              @native._call(command, @flags.bits)
            end
          block && reply != QUEUED ? block.call(reply) : reply
        end

        # Blocking commands: the socket waits for the read timeout plus the command's own
        # timeout, or forever when the command's is 0 -- as redis-rb's `call_with_timeout`.
        def call_with_timeout(command, timeout, &block)
          # redis-rb adds the timeout to its read timeout: a timeout that is not a number raises
          # what that addition raises (a String "can't be coerced into Float").
          self.timeout + timeout unless timeout.is_a?(Numeric)
          state = thread_state
          reply =
            if state&.session
              # Caught up first, but its keys not held while it waits (see the core's
              # `run_blocking`).
              on_pinned(state, [command]) { state.session._end_writes; state.session._call_blocking(command, timeout.to_f) }
            else
              @native._call_blocking(command, timeout.to_f, @flags.bits)
            end
          block && reply != QUEUED ? block.call(reply) : reply
        end

        def call_without_timeout(command, &block)
          call_with_timeout(command, 0, &block)
        end

        def call_pipeline(pipeline)
          return [] if pipeline.futures.empty?

          begin
            result = pipeline.finish(call_pipelined(pipeline))
            self.db = pipeline.db if pipeline.db
            result
          rescue ::Redis::ConnectionError
            # A pipeline ending in SHUTDOWN loses its connection by design.
            return nil if pipeline.shutdown?

            raise
          end
        ensure
          # EXEC ends a WATCH, so the connection a watch pinned is free again.
          unpin if pipeline.is_a?(::Redis::Pipeline::Multi)
        end

        # Raw replies; raises the first error reply, as redis-rb does before resolving futures.
        def call_pipelined(pipeline)
          commands = pipeline.commands
          state = thread_state
          replies =
            if state&.session && pipeline.is_a?(::Redis::Pipeline::Multi)
              pinned_transaction(state, commands)
            elsif state&.session
              on_pinned(state, commands) { state.session._pipeline(commands) }
            else
              @native._pipeline(commands, @flags.bits, state&.readonly ? true : false)
            end
          error = replies.find { |reply| reply.is_a?(::Redis::CommandError) }
          raise error if error

          replies
        end

        # A transaction on a watched connection runs on the store it was pinned to only; once
        # it committed, the other store gets the same commands. No copy lands on its keys in
        # between (see `catch_up_pinned`).
        def pinned_transaction(state, commands)
          catch_up_pinned(state, commands)
          session = state.session
          pinned_replies = in_doubt_on_pinned(state, commands) { session._pipeline(commands) }
          mirror(commands, session) unless pinned_replies.last.nil?
          pinned_replies
        ensure
          session&._end_writes
        end

        # Sends a command and yields every reply that follows on the same connection (MONITOR,
        # SUBSCRIBE), with the connection pinned to this thread until the loop ends.
        def call_loop(command, timeout = 0)
          # As redis-rb's socket does before anything is sent: a timeout that is not a number
          # fails the comparison (`subscribe_with_timeout` with a channel where the timeout goes).
          timeout > 0 # rubocop:disable Style/NumericPredicate -- raises for a non-number as redis-rb does
          session = SUBSCRIBING.include?(command.first.to_s.downcase) ? pin_subscription : pin
          clean = false
          begin
            session._write(command)
            loop do
              reply = session._read(timeout.to_f)
              raise reply if reply.is_a?(::Redis::CommandError)

              # Only the final unsubscribe's confirmation leaves the connection fit for reuse.
              # Told by the reply, not by how the loop ends: redis-rb's subscription leaves it
              # with `break`, and Timeout (a throw) or Thread#kill end it the same way, no
              # exception passing through here.
              clean = final_unsubscribe?(reply)
              yield reply
            end
          ensure
            # Anything else (MONITOR, an exception, an interrupt mid-subscription) closes it.
            clean && REUSABLE_AFTER_LOOP.include?(command.first.to_s.downcase) ? unpin : discard_pin
          end
        end

        def final_unsubscribe?(reply)
          reply.is_a?(Array) && reply.last == 0 && UNSUBSCRIBED.include?(reply.first.to_s.downcase)
        end

        # Writes without reading: used by `Redis::SubscribedClient#unsubscribe` from inside a
        # subscription, whose loop reads the confirmation.
        def process(commands)
          session = thread_state&.session || raise(::Redis::ConnectionError, "not subscribed")
          commands.each { |command| session._write(command) }
        end

        # A command run on this thread's pinned connection (inside WATCH or a block-less MULTI)
        # reaches the store it is pinned to only. Inside a block-less MULTI it is recorded, and
        # the whole transaction replayed on the other store after EXEC; otherwise the keys it
        # writes are journaled, and re-synced from the pinned store (reads of them go there
        # meanwhile). A command that raised may have been applied all the same.
        def on_pinned(state, commands)
          if state.queued
            state.queued.concat(commands.reject { |command| TRANSACTION_CONTROL.include?(command.first) })
            return yield unless commands.any? { |command| command.first == :exec }

            # EXEC itself: the queued commands are what may run, and what may have run. The
            # registration `catch_up_pinned` makes ends once the transaction is replayed (in
            # `MultiStore#exec`).
            catch_up_pinned(state, state.queued)
            return in_doubt_on_pinned(state, state.queued) { yield }
          end
          session = state.session
          catch_up_pinned(state, commands)
          begin
            reply = yield
          rescue ::Redis::BaseConnectionError
            @native._journal_pinned(commands, @flags.bits, session)
            raise
          end
          @native._journal_pinned(commands, @flags.bits, session)
          reply
        ensure
          session&._end_writes
        end

        # The store a session is pinned to may have missed writes of the keys about to be read
        # or written on it (the default flipped back before the re-sync copied them): they are
        # copied there first, as before any write outside a session, and no other copy lands
        # on them until the session's `_end_writes`, once what ran there reached the other store.
        def catch_up_pinned(state, commands)
          @native._catch_up_pinned(commands, @flags.bits, state.session)
        end

        # Ends what `catch_up_pinned` registered for this thread's session, if it has one.
        def end_pinned_writes
          thread_state&.session&._end_writes
        end

        # A transaction on the pinned connection whose EXEC failed with a connection error may
        # have committed there all the same: its keys are journaled, re-synced from the pinned
        # store, so the other store cannot keep what the transaction changed.
        def in_doubt_on_pinned(state, commands)
          yield
        rescue ::Redis::BaseConnectionError
          @native._journal_pinned(commands, @flags.bits, state.session)
          raise
        end

        # Replays a transaction that committed on `session`'s pinned connection on the other
        # store: the other one of the store it was pinned to, even if the default store flipped
        # since MULTI (or WATCH).
        def mirror(commands, session)
          @native._mirror(commands, @flags.bits, session)
        end

        # SELECT moves both stores (see the core's `select`); on a pinned connection (inside
        # WATCH or a block-less MULTI) it runs there, and both stores follow once it succeeded.
        def select(db)
          state = thread_state
          return @native._call([:select, db], @flags.bits) unless state&.session

          # Queued in a block-less MULTI it answers QUEUED; EXEC then moves both stores.
          reply = on_pinned(state, [[:select, db]]) { state.session._call([:select, db]) }
          @native._set_db(Integer(db)) if reply == "OK"
          reply
        end

        def pin
          state = thread_state!
          state.session ||= register(@native._session(@flags.bits))
        end

        # A subscription's pinned connection: with dual-write on it listens on both stores.
        def pin_subscription
          state = thread_state!
          state.session ||= register(@native._subscription_session(@flags.bits))
        end

        # A thread killed between WATCH and EXEC (or inside a subscription) never releases its
        # pinned connection, and its thread-locals live as long as its Thread object is
        # referenced: the connections of dead threads are closed when the next one is pinned.
        #
        # No lock (a trap handler may pin, and cannot take one): the look goes over a copy, each
        # dead thread's session is closed by whoever deletes it, and adding a key is one call.
        def register(session)
          @pins.dup.each do |pinned, thread|
            next unless !thread.alive? && @pins.delete(pinned)

            begin
              pinned._discard
            rescue ThreadError
              # Busy for good: a forked child inherits a session another thread was using at
              # the fork. Its connection is the parent's; left to the garbage collector.
              nil
            end
          end
          @pins[session] = Thread.current
          session
        end

        def pinned?
          !thread_state&.session.nil?
        end

        # Returns this thread's pinned connection to the pool.
        def unpin
          release_pin(&:_release)
        end

        # Closes this thread's pinned connection instead: it may be in a state (MONITOR, a
        # subscription, an exception half-way) no other caller should inherit.
        def discard_pin
          release_pin(&:_discard)
        end

        def release_pin
          state = thread_state
          return unless state&.session

          session = state.session
          state.session = nil
          @pins.delete(session)
          yield session
        end

        def thread_state
          Thread.current[@state_key]
        end

        def thread_state!
          Thread.current[@state_key] ||= ThreadState.new
        end

        def db
          @native._store_db(default_role)
        end

        # A pipelined SELECT ran on both stores' connections (which are then closed): move both
        # pools.
        def db=(db)
          @native._set_db(db.to_i)
        end

        def timeout
          @native._store_read_timeout(default_role)
        end

        def id
          @native._store_id(default_role)
        end

        def connected?
          @native._connected?(@flags.bits)
        end

        def default_role
          @flags.primary_default? ? :primary : :secondary
        end

        def disconnect
          @native._disconnect
        end
        alias close disconnect

        # Reconnection is always on in the core (one retry, as redis-rb's default); commands
        # that expect the connection to drop (QUIT, SHUTDOWN) rescue the resulting error.
        def with_reconnect(_value = true)
          yield
        end

        def without_reconnect(&block)
          with_reconnect(false, &block)
        end
      end
    end
  end
end
