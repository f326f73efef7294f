"""``python -m ablate [overrides]``: one experiment (or a sweep with ``-m``)."""

from ablate.cli import main

if __name__ == "__main__":
    main()
