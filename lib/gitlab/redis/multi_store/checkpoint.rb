# frozen_string_literal: true

require "base64"
require "fileutils"
require "json"

module Gitlab
  module Redis
    class MultiStore < ::Redis
      # A backfill's or a verify's progress in a file, written after every page (to a temporary
      # file renamed over it, so a kill never leaves half a checkpoint), so that one killed by a
      # deploy or a crash continues where it was (`checkpoint: path, resume: true`, CLI
      # `--checkpoint FILE --resume`) instead of starting over. It names what it is for -- the
      # command, the stores, the database, the pattern -- and a resume of anything else is
      # refused. Removed when the work finishes.
      class Checkpoint
        FORMAT = 1

        def initialize(path, identity)
          @path = path
          @identity = identity
        end

        # The native progress saved, for `NativeBackfill.new` / `NativeVerify.new`; nil when there
        # is none to resume.
        def load
          remove_stale_temporaries
          return nil unless File.exist?(@path)

          saved = begin
            JSON.parse(File.read(@path))
          rescue JSON::ParserError => e
            raise ArgumentError, "the checkpoint #{@path} cannot be read (#{e.class}): remove it to start over"
          end
          unless saved["format"] == FORMAT && saved["for"] == @identity
            raise ArgumentError, "the checkpoint #{@path} is for another #{@identity['command']} " \
                                 "(#{saved['for'].inspect}), not #{@identity.inspect}"
          end

          decode(saved.fetch("progress"))
        end

        def save(native_progress)
          FileUtils.mkdir_p(File.dirname(@path))
          temporary = "#{@path}.#{Process.pid}.tmp"
          File.write(temporary, JSON.generate("format" => FORMAT, "for" => @identity, "progress" => encode(native_progress)))
          File.rename(temporary, @path)
        end

        def remove
          FileUtils.rm_f(@path)
          remove_stale_temporaries
        end

        private

        # The temporary files of processes killed between a write and its rename.
        def remove_stale_temporaries
          dir = File.dirname(@path)
          prefix = "#{File.basename(@path)}."
          return unless File.directory?(dir)

          Dir.children(dir).each do |name|
            pid = name.delete_prefix(prefix)[/\A(\d+)\.tmp\z/, 1] if name.start_with?(prefix)
            next if pid.nil? || alive?(Integer(pid))

            FileUtils.rm_f(File.join(dir, name))
          end
        end

        def alive?(pid)
          return true if pid == Process.pid

          Process.kill(0, pid)
          true
        rescue Errno::ESRCH
          false
        rescue Errno::EPERM
          true
        end

        # Keys and cursors are bytes: base64 in the file; fingerprints hex.
        def encode(progress)
          encoded = progress.to_h { |key, value| [key.to_s, value] }
          encoded["cursor"] = Base64.strict_encode64(progress[:cursor])
          encoded["report"] = progress[:report].transform_keys(&:to_s)
          if progress.key?(:pending)
            encoded["pending"] = progress[:pending].map { |key, fingerprint| [Base64.strict_encode64(key), fingerprint.unpack1("H*")] }
          end
          encoded
        end

        def decode(progress)
          decoded = progress.to_h { |key, value| [key.to_sym, value] }
          decoded[:cursor] = Base64.strict_decode64(progress.fetch("cursor"))
          decoded[:report] = progress.fetch("report").transform_keys(&:to_sym)
          if progress.key?("pending")
            decoded[:pending] = progress["pending"].map { |key, fingerprint| [Base64.strict_decode64(key), [fingerprint].pack("H*")] }
          end
          decoded
        rescue KeyError, ArgumentError => e
          raise ArgumentError, "the checkpoint #{@path} cannot be read (#{e.message}): remove it to start over"
        end
      end
    end
  end
end
