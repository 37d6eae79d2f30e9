# frozen_string_literal: true

# Builds the native extension. With the rb_sys gem available, its mkmf helper does the work.
# Without it (Debian's Ruby has no rb_sys package and RubyGems may be out of reach), this
# writes a plain Makefile that runs cargo itself: `make` builds, `make install` puts the
# library where `require "gitlab_multistore/gitlab_multistore"` finds it.

require "mkmf"
require "rbconfig"
require "tmpdir"

TARGET = "gitlab_multistore/gitlab_multistore"

begin
  require "rb_sys/mkmf"
  create_rust_makefile(TARGET)
rescue LoadError
  cargo = ENV.fetch("CARGO", "cargo")
  unless system(cargo, "--version", out: File::NULL, err: File::NULL)
    abort "gitlab_multistore needs Rust's cargo on PATH to build its native extension " \
          "(install it with rustup, or Debian's cargo package)."
  end

  ext_dir = File.expand_path(__dir__)
  manifest = File.join(ext_dir, "Cargo.toml")
  # Outside the installed gem, so its ~200 MB of build products do not stay in the gem dir;
  # kept between installs so a reinstall builds incrementally.
  target_dir = ENV.fetch("CARGO_TARGET_DIR") { File.join(Dir.tmpdir, "gitlab_multistore-cargo-target") }
  built = File.join(target_dir, "release", "lib#{File.basename(TARGET)}.#{RbConfig::CONFIG['SOEXT']}")
  dlext = RbConfig::CONFIG["DLEXT"]

  File.write("Makefile", <<~MAKE)
    RUBY = #{RbConfig.ruby}
    CARGO = #{cargo}
    sitearchdir = #{RbConfig::CONFIG['sitearchdir']}
    TARGET_DIR = #{target_dir}
    LIBRARY = #{File.basename(TARGET)}.#{dlext}

    all: $(LIBRARY)

    $(LIBRARY):
    \tRUBY=$(RUBY) CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) build --release --locked --manifest-path #{manifest}
    \tcp #{built} $(LIBRARY)

    install: $(LIBRARY)
    \tmkdir -p $(sitearchdir)/#{File.dirname(TARGET)}
    \tcp $(LIBRARY) $(sitearchdir)/#{TARGET}.#{dlext}

    clean:
    \trm -f $(LIBRARY)

    distclean: clean
    \trm -f Makefile

    .PHONY: all install clean distclean
  MAKE
end
