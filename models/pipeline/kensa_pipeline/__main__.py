"""`python -m kensa_pipeline ...` entry point."""

from kensa_pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
