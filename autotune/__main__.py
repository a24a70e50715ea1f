import sys

# Ctrl-C while the CLI itself is still being imported: one line and exit 130, as later on.
try:
    from .cli import main
except KeyboardInterrupt:
    sys.stderr.write("autotune: interrupted; nothing was written\n")
    raise SystemExit(130) from None

raise SystemExit(main())
