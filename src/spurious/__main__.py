"""``python -m spurious``: same as the ``spurious`` console script."""

from spurious.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
