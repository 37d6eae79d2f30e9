# frozen_string_literal: true

require "cgi"

module GitlabMultistore
  # A picture of a migration: what an operator watches, sampled over time, with the runbook's
  # steps marked, written as one self-contained HTML file (inline SVG, no script, nothing
  # fetched) that any browser opens.
  class Timeline
    SERIES = {
      ops: ["operations/s", "#2563eb"],
      fallbacks: ["read fallbacks/s", "#d97706"],
      pipeline_diffs: ["pipeline differences/s", "#7c3aed"],
      write_failures: ["non-default write failures/s", "#dc2626"],
      journal: ["keys waiting for re-sync", "#059669"]
    }.freeze
    WIDTH = 900
    HEIGHT = 120
    MARGIN = 40

    Sample = Struct.new(:at, :values)
    Step = Struct.new(:at, :title)

    def initialize
      @samples = []
      @steps = []
    end

    # @param at [Float] seconds since the start
    # @param values [Hash] a value per SERIES key
    def sample(at, **values)
      @samples << Sample.new(at, values)
    end

    def step(at, title)
      @steps << Step.new(at, title)
    end

    def write(path)
      File.write(path, html)
      path
    end

    def html
      <<~HTML
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>gitlab_multistore: a migration</title>
        <style>body{font:14px sans-serif;margin:24px;color:#111}h2{font-size:15px;margin:18px 0 4px}
        svg{display:block}text{font:11px sans-serif}.step{stroke:#9ca3af;stroke-dasharray:4 3}</style></head>
        <body><h1>A migration, step by step</h1>
        <p>Sampled every second while the demo walked the runbook; dashed lines mark the steps.</p>
        <ol>#{@steps.map { |s| "<li>#{format('%.1f', s.at)} s: #{CGI.escapeHTML(s.title)}</li>" }.join}</ol>
        #{SERIES.map { |key, (label, color)| chart(key, label, color) }.join("\n")}
        </body></html>
      HTML
    end

    private

    def chart(key, label, color)
      values = @samples.map { |s| s.values.fetch(key, 0).to_f }
      top = [values.max || 0, 1].max
      points = @samples.zip(values).map { |s, v| "#{x(s.at).round(1)},#{y(v, top).round(1)}" }.join(" ")
      <<~SVG
        <h2>#{CGI.escapeHTML(label)} (max #{format_value(top)})</h2>
        <svg width="#{WIDTH + 2 * MARGIN}" height="#{HEIGHT + 30}" role="img" aria-label="#{CGI.escapeHTML(label)}">
        <line x1="#{MARGIN}" y1="#{HEIGHT + 5}" x2="#{WIDTH + MARGIN}" y2="#{HEIGHT + 5}" stroke="#d1d5db"/>
        #{@steps.each_with_index.map { |s, i| step_mark(s, i) }.join}
        <polyline fill="none" stroke="#{color}" stroke-width="2" points="#{points}"/>
        <text x="#{MARGIN}" y="#{HEIGHT + 22}">0 s</text>
        <text x="#{WIDTH + MARGIN - 30}" y="#{HEIGHT + 22}">#{format('%.0f', duration)} s</text>
        </svg>
      SVG
    end

    def step_mark(step, index)
      "<line class=\"step\" x1=\"#{x(step.at).round(1)}\" y1=\"5\" x2=\"#{x(step.at).round(1)}\" y2=\"#{HEIGHT + 5}\"/>" \
        "<text x=\"#{(x(step.at) + 3).round(1)}\" y=\"14\">#{index + 1}</text>"
    end

    def duration
      [(@samples.map(&:at) + @steps.map(&:at)).max || 1, 1].max
    end

    def x(at) = MARGIN + (at / duration) * WIDTH

    def y(value, top) = 5 + HEIGHT - (value / top) * HEIGHT

    def format_value(value)
      value >= 100 ? format("%.0f", value) : format("%.2g", value)
    end
  end
end
