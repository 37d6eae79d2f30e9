# frozen_string_literal: true

require "socket"

module GitlabMultistore
  # Serves `GET /metrics` (Prometheus text 0.0.4) on a port for the command line's long runs
  # and the demo, so a Prometheus can scrape them: every MultiStore metric of the process, plus
  # the gauges of a running backfill or verify (`progress`). A thread per server, one request
  # at a time -- a scraper's load.
  class MetricsServer
    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
    PROGRESS_FIELDS = {
      "backfill" => %i[scanned copied already_present expired failed total],
      "verify" => %i[checked agree missing_on_primary different only_on_primary repaired unreadable total]
    }.freeze

    attr_reader :port

    # @param port [Integer] 0 picks a free one (see #port)
    # @param bind [String] the address to listen on (loopback unless told otherwise)
    def initialize(port:, bind: "127.0.0.1")
      @server = TCPServer.new(bind, port)
      @port = @server.addr[1]
      @progress = {}
      @lock = Mutex.new
      @thread = Thread.new { serve }
    end

    # The latest progress of a backfill or verify (a BackfillProgress / VerifyProgress), shown
    # as gitlab_multistore_<command>_<field> gauges and a _done one.
    def progress(command, report)
      @lock.synchronize { @progress[command] = report }
    end

    def close
      @thread&.kill
      @server.close unless @server.closed?
    end

    def text
      Gitlab::Redis::MultiStore.metrics_text + progress_text
    end

    private

    def progress_text
      reports = @lock.synchronize { @progress.dup }
      reports.map do |command, report|
        fields = PROGRESS_FIELDS.fetch(command)
        lines = fields.map do |field|
          gauge("gitlab_multistore_#{command}_#{field}", "#{command} progress: #{field.to_s.tr('_', ' ')}",
                report.public_send(field))
        end
        lines << gauge("gitlab_multistore_#{command}_done", "1 once the #{command} has finished", report.done? ? 1 : 0)
        lines.join
      end.join
    end

    def gauge(name, help, value)
      "# HELP #{name} #{help}\n# TYPE #{name} gauge\n#{name} #{value.to_f}\n"
    end

    def serve
      loop do
        client = @server.accept
        begin
          respond(client)
        rescue IOError, SystemCallError
          nil # the scraper went away
        ensure
          client.close
        end
      end
    rescue IOError
      nil # closed
    end

    def respond(client)
      request = client.gets.to_s
      # Headers are read and ignored; the body of a GET is empty.
      while (line = client.gets) && line != "\r\n"; end
      method, path = request.split(" ", 3)
      if method == "GET" && path&.split("?")&.first == "/metrics"
        write(client, "200 OK", CONTENT_TYPE, text)
      else
        write(client, "404 Not Found", "text/plain", "only GET /metrics is served here\n")
      end
    end

    def write(client, status, type, body)
      client.write("HTTP/1.1 #{status}\r\nContent-Type: #{type}\r\nContent-Length: #{body.bytesize}\r\n" \
                   "Connection: close\r\n\r\n#{body}")
    end
  end
end
