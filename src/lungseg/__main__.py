"""``python -m lungseg`` (and ``torchrun -m lungseg``) runs the CLI."""

from lungseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
