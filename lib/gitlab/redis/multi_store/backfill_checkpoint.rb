# frozen_string_literal: true

require "base64"
require "fileutils"
require "json"

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # A backfill's progress in a file, written after every page (to a temporary file renamed
      # over it, so a kill never leaves half a checkpoint), so that a backfill killed by a deploy
      # or a crash continues where it was (`backfill(checkpoint: path, resume: true)`, CLI
      # `--checkpoint FILE --resume`) instead of starting over: the SCAN cursor, the counters,
      # and the keys copied whose second look was still due. It names the stores, the database
      # and the pattern it is for, and a resume elsewhere is refused. Removed when the backfill
      # finishes.
      class BackfillCheckpoint
        FORMAT = 1

        def initialize(path, identity)
          @path = path
          @identity = identity
        end

        # The saved progress, for the native backfill; nil when there is none to resume.
        def load
          return nil unless File.exist?(@path)

          saved = JSON.parse(File.read(@path))
          unless saved["format"] == FORMAT && saved["for"] == @identity
            raise ArgumentError, "the checkpoint #{@path} is for another backfill (#{saved['for'].inspect}), " \
                                 "not #{@identity.inspect}"
          end

          progress = saved.fetch("progress")
          {
            cursor: Base64.strict_decode64(progress.fetch("cursor")),
            report: progress.fetch("report").transform_keys(&:to_sym),
            pending: progress.fetch("pending").map { |key, fingerprint| [Base64.strict_decode64(key), [fingerprint].pack("H*")] }
          }
        rescue JSON::ParserError, KeyError, ArgumentError => e
          raise if e.is_a?(ArgumentError) && e.message.start_with?("the checkpoint")

          raise ArgumentError, "the checkpoint #{@path} cannot be read (#{e.class}): remove it to start over"
        end

        def save(native_checkpoint)
          progress = {
            "cursor" => Base64.strict_encode64(native_checkpoint[:cursor]),
            "report" => native_checkpoint[:report].transform_keys(&:to_s),
            "pending" => native_checkpoint[:pending].map { |key, fingerprint| [Base64.strict_encode64(key), fingerprint.unpack1("H*")] }
          }
          FileUtils.mkdir_p(File.dirname(@path))
          temporary = "#{@path}.#{Process.pid}.tmp"
          File.write(temporary, JSON.generate("format" => FORMAT, "for" => @identity, "progress" => progress))
          File.rename(temporary, @path)
        end

        def remove
          FileUtils.rm_f(@path)
        end
      end
    end
  end
end
