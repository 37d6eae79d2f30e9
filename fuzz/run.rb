# frozen_string_literal: true

# rake fuzz: runs seeded fuzz programs until FUZZ_SECONDS have passed (default 180), or replays
# one exactly with SEED=… STEPS=… (KEEP=i,j,… for a part of it). On the first broken invariant
# it shrinks the program, prints a self-contained Ruby snippet and the seed, and exits 1.
#
#   rake fuzz                         # a few minutes of random programs
#   FUZZ_SECONDS=7200 rake fuzz       # two hours
#   rake fuzz SEED=42 STEPS=300       # replay one program
Redis.silence_deprecations = true if defined?(Redis) && Redis.respond_to?(:silence_deprecations=)
require_relative "multistore_fuzz"

Redis.silence_deprecations = true
Gitlab::Redis::MultiStore.logger = Logger.new(File::NULL)
$stdout.sync = true

seconds = Float(ENV.fetch("FUZZ_SECONDS", "180"))
steps = Integer(ENV.fetch("STEPS", "300"))
seed = ENV["SEED"]&.then { |s| Integer(s) }
keep = ENV["KEEP"]&.split(",")&.map { |i| Integer(i) }
replay = !seed.nil? && ENV.key?("STEPS")

servers = MultistoreFuzz.start_servers
runner = MultistoreFuzz::Runner.new(servers, MultistoreFuzz::Grammar.new(servers[:reference].client))
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
elapsed = -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) - started }
seed ||= Random.new_seed % 1_000_000_000
totals = Hash.new(0)
rounds = 0
status = 0
begin
  loop do
    program = MultistoreFuzz::Program.new(runner.grammar, seed: seed + rounds, length: steps)
    program.steps.each { |step| totals[step.kind] += 1 }
    checks = nil
    failure = runner.run(program, only: keep) { |world| checks = world.checks }
    rounds += 1
    if failure
      puts "\nFAIL seed #{program.seed} (#{program.read_strategy}): #{failure.message}"
      puts "shrinking (up to #{ENV.fetch('SHRINK_SECONDS', '120')} s)…"
      indices = keep || runner.shrink(program, failure, seconds: Float(ENV.fetch("SHRINK_SECONDS", "120")))
      again = runner.run(program, only: indices) || failure
      puts "minimized to #{indices.size} steps: #{again.message}"
      puts "----- snippet -----"
      puts MultistoreFuzz::Snippet.render(program, indices, again)
      puts "-------------------"
      status = 1
      break
    end
    print format("round %<r>d seed %<s>d %<strategy>s: %<n>d steps ok (%<c>s) %<t>.0fs\n", r: rounds, s: program.seed,
                                                                                         strategy: program.read_strategy,
                                                                                         n: keep&.size || steps,
                                                                                         c: checks.map { |k, v| "#{k} #{v}" }.join(", "),
                                                                                         t: elapsed.call)
    break if replay || elapsed.call > seconds
  end
ensure
  servers.each_value(&:cleanup)
end
puts "fuzz: #{rounds} rounds from seed #{seed}, #{rounds * steps} steps in #{elapsed.call.round}s " \
     "(#{totals.sort_by { |_, v| -v }.map { |k, v| "#{k} #{v}" }.join(', ')}); #{status.zero? ? 'no invariant broken' : 'FAILED'}"
exit status
