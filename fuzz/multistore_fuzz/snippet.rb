# frozen_string_literal: true

module MultistoreFuzz
  # A failing program part as a Ruby script that needs only the gem: it starts its own servers,
  # runs the steps through a MultiStore and a plain client side by side, and prints what the two
  # answered and what each server holds.
  module Snippet
    module_function

    def render(program, indices, failure)
      lines = [
        "# gitlab_multistore fuzz: seed #{program.seed}, #{program.steps.size} steps, read_strategy " \
        "#{program.read_strategy}; the #{indices.size} steps below (of #{failure.step_index + 1}) still fail:",
        "# #{failure.message.lines.first.strip}",
        "# Replay the whole program: rake fuzz SEED=#{program.seed} STEPS=#{program.steps.size}; " \
        "this part: KEEP=#{indices.join(',')}",
        'require "gitlab_multistore"',
        'require "gitlab_multistore/local_redis_server"',
        "servers = { primary: GitlabMultistore::LocalRedisServer.new, secondary: GitlabMultistore::LocalRedisServer.new,",
        "            reference: GitlabMultistore::LocalRedisServer.new }",
        "flags = { dual: false, primary_default: false }",
        "source = ->(flag) { flag.to_s.start_with?('use_primary_and_secondary') ? flags[:dual] : flags[:primary_default] }",
        "store = Gitlab::Redis::MultiStore.new({ url: servers[:primary].url, timeout: #{World::TIMEOUT} },",
        "                                      { url: servers[:secondary].url, timeout: #{World::TIMEOUT} }, " \
        "\"#{World::NAME}\", feature_flags: source,",
        "                                      read_strategy: :#{program.read_strategy}, breaker_cool_down: 0.3, " \
        "journal_capacity: 50)",
        "reference = Redis.new(url: servers[:reference].url)",
        "both = ->(label, &call) { [store, reference].map { |c| begin; call.call(c); rescue StandardError => e; " \
        "\"raised #{'#{e.class}: #{e.message}'}\"; end }.tap { |a, b| puts \"#{'#{label}'}: multistore #{'#{a.inspect}'} " \
        "reference #{'#{b.inspect}'}\" } }",
        "begin"
      ]
      indices.each { |i| lines.concat(step(program.steps[i]).map { |l| "  #{l}" }) }
      lines.concat([
                     "  sleep 0.5",
                     "  servers.each do |role, server|",
                     "    c = server.client",
                     "    puts \"#{'#{role}'}: \" + [0, 1].map { |db| c.select(db); c.keys('*').sort.map { |k| " \
                     "[k, c.type(k), c.dump(k)&.bytesize, c.call(:pexpiretime, k)] } }.inspect",
                     "  end",
                     "  p store.migration_status",
                     "ensure",
                     "  servers.each_value(&:cleanup)",
                     "end"
                   ])
      lines.join("\n")
    end

    def step(step)
      args = step.args
      case step.kind
      when :command, :blocking then ["both.call(#{args[0].inspect}) { |c| c.call(*#{args[0].inspect}) }"]
      when :pipeline then ["both.call('pipeline') { |c| c.pipelined { |p| #{args[0].inspect}.each { |a| p.call(*a) } } }"]
      when :multi then ["both.call('multi') { |c| c.multi { |t| #{args[0].inspect}.each { |a| t.call(*a) } } }"]
      when :watch_multi
        ["both.call('watch') { |c| c.watch(#{args[0].inspect}) { c.multi { |t| #{args[1].inspect}.each { |a| t.call(*a) } } } }"]
      when :blockless_multi
        ["both.call('multi') { |c| [c.multi, *#{args[0].inspect}.map { |a| c.call(*a) rescue $!.message }, c.exec] }"]
      when :eval then ["both.call('eval') { |c| c.eval(#{args[0].inspect}, keys: #{args[1].inspect}, argv: #{args[2].inspect}) }"]
      when :select then ["both.call('select') { |c| c.select(#{args[0]}) }"]
      when :publish then ["both.call('publish') { |c| c.publish(#{args[0].inspect}, #{args[1].inspect}) }"]
      when :flip then ["if store.migration_status[:full_verify_needed] # repaired before the default changes",
                       "  db = store.connection[:db]; ([0, 1] - [db] + [db]).each { |d| store.select(d); store.verify(repair: true) }",
                       "end",
                       "flags.replace(#{STATES.fetch(args[0]).inspect}) # #{args[0]} (#{args[1]})"]
      when :switch then ["db = store.connection[:db]; ([0, 1] - [db] + [db]).each { |d| store.select(d); store.backfill; " \
                         "store.verify(repair: true) }", "flags[:primary_default] = true if store.migration_status[:safe_to_switch] " \
                         "# the operator's switch"]
      when :hang then ["role = flags[:primary_default] ? :secondary : :primary; Process.kill(:STOP, servers[role].pid) # hang"]
      when :unhang then ["servers.each_value { |s| Process.kill(:CONT, s.pid) }"]
      when :restart_non_default then ["servers[flags[:primary_default] ? :secondary : :primary].restart"]
      when :kill_connections then ["servers[#{args[0] == :default ? "flags[:primary_default] ? :primary : :secondary" : "flags[:primary_default] ? :secondary : :primary"}].client.call(:client, :kill, :type, :normal, :skipme, :yes)"]
      when :slow_batch then ["both.call('slow #{args[0]}') { |c| c.#{args[0] == :multi ? 'multi' : 'pipelined'} { |b| [['INCR', #{args[1].inspect}], ['EVAL', #{World::BUSY.inspect}, '0'], ['INCR', #{args[1].inspect}]].each { |a| b.call(*a) } } }", "sleep 0.5"]
      # As the program's steps do: a refused backfill (after the switch) is printed, not raised.
      when :backfill then ["p(begin; store.backfill; rescue StandardError => e; e; end)"]
      when :verify then ["p(begin; store.verify(repair: #{args[0]}); rescue StandardError => e; e; end)"]
      when :backfill_under_load
        ["t = Thread.new { store.backfill(count: 3) rescue $! }", *args[0].map { |a| "both.call(#{a.inspect}) { |c| c.call(*#{a.inspect}) }" }, "t.join"]
      when :fork_check then ["pid = fork { exit!(store.type(#{args[0].inspect}) == reference.type(#{args[0].inspect}) ? 0 : 1) }; p Process.wait2(pid)"]
      when :threads
        batches = args[0].each_with_index.map { |commands, t| World.thread_commands(commands, t) }
        ["#{batches.inspect}.map { |cs| Thread.new { cs.each { |a| both.call(a) { |c| c.call(*a) } } } }.each(&:join) # threads"]
      else ["# #{step}"]
      end
    end
  end
end
