# frozen_string_literal: true

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # Where the native core's log lines and metric samples arrive, with the GVL held, after the
      # native call that produced them. Nothing here may raise into the caller's command: a
      # failing logger or metrics hook is reported to the logger (or, failing that, dropped).
      module NativeEvents
        module_function

        # rows: [[severity (Logger level), line], ...]
        def deliver_logs(rows)
          logger = MultiStore.logger
          rows.each { |severity, line| logger.add(severity, line) }
          nil
        rescue StandardError
          nil
        end

        # rows: [[metric_name (Symbol), labels (Hash), value (Float)], ...]
        #
        # Each sample on its own: a hook failing on one still gets the others. The samples of
        # calls the hook itself makes (a metrics client kept in a MultiStore) are not handed to
        # it again, which would never end.
        def deliver_samples(rows)
          hook = MultiStore.on_metric
          return if hook.nil? || Thread.current[:gitlab_multistore_in_on_metric]

          begin
            Thread.current[:gitlab_multistore_in_on_metric] = true
            rows.each do |name, labels, value|
              hook.call(name, labels, value)
            rescue StandardError => e
              MultiStore.logger.error("gitlab_multistore: on_metric raised #{e.class}: #{e.message}")
            end
          ensure
            Thread.current[:gitlab_multistore_in_on_metric] = nil
          end
          nil
        end
      end
    end
  end
end
