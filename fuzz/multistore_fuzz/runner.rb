# frozen_string_literal: true

module MultistoreFuzz
  # Runs programs on a world, and when one breaks an invariant, looks for the shortest part of
  # it that still breaks the same one (delta debugging: drop ever smaller chunks of steps while
  # the failure stays).
  class Runner
    attr_reader :servers, :grammar

    def initialize(servers, grammar, out: $stdout)
      @servers = servers
      @grammar = grammar
      @out = out
    end

    # The failure, or nil. `only`: run just these step indices of the program.
    def run(program, only: nil, world: nil)
      own = world.nil?
      world ||= World.new(@servers, @grammar, read_strategy: program.read_strategy)
      indices = only || (0...program.steps.size).to_a
      indices.each { |i| world.run(program.steps[i], i) }
      yield world if block_given?
      nil
    rescue Failure => e
      e
    ensure
      world&.close if own
    end

    # The step indices of a shortest program part found that fails the same way.
    def shrink(program, failure, seconds:)
      deadline = monotonic + seconds
      indices = (0..failure.step_index).to_a
      parts = 2
      world = World.new(@servers, @grammar, read_strategy: program.read_strategy)
      while indices.size > 1 && monotonic < deadline
        size = (indices.size / parts.to_f).ceil
        smaller = indices.each_slice(size).map { |chunk| indices - chunk }.find do |candidate|
          next false if monotonic > deadline

          world.reset!
          again = run(program, only: candidate, world: world)
          again&.kind == failure.kind
        end
        if smaller
          indices = smaller
          parts = [parts - 1, 2].max
        else
          break if parts >= indices.size

          parts = [parts * 2, indices.size].min
        end
      end
      indices
    ensure
      world&.close
    end

    private

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
