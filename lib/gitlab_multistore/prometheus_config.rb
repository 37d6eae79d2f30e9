# frozen_string_literal: true

require "yaml"

module GitlabMultistore
  # A Prometheus configuration that scrapes a metrics server (the demo's, or the command line's)
  # and evaluates the shipped rules: what the demo writes for watching its alerts fire, and what
  # the specs start a real Prometheus with.
  module PrometheusConfig
    RULES = File.expand_path("../../prometheus/gitlab_multistore.rules.yml", __dir__)

    module_function

    # Writes the shipped rules with every alert's `for:` set to `hold`, and nothing else changed:
    # the same recording rules, expressions, labels and annotations. The shipped durations
    # (minutes) are longer than the demo, whose alerts would otherwise only ever be pending.
    #
    # @return [String] path
    def rules_with_hold(path, hold: "0s")
      rules = YAML.safe_load_file(RULES)
      rules.fetch("groups").each do |group|
        group.fetch("rules").each { |rule| rule["for"] = hold if rule.key?("alert") }
      end
      File.write(path, "# #{RULES} with every alert's `for:` set to #{hold}, for a demo; written by gitlab_multistore.\n" \
                       "#{YAML.dump(rules)}")
      path
    end

    # Writes prometheus.yml into `dir`: one scrape job for `target` (host:port), the rules in
    # `rules` loaded, scraped and evaluated every `interval`.
    #
    # @return [String] path
    def write(dir, target:, rules: RULES, interval: "1s")
      path = File.join(dir, "prometheus.yml")
      File.write(path, YAML.dump(
                         "global" => { "scrape_interval" => interval, "evaluation_interval" => interval },
                         "rule_files" => [rules],
                         "scrape_configs" => [{ "job_name" => "gitlab_multistore", "static_configs" => [{ "targets" => [target] }] }]
                       ))
      path
    end
  end
end
