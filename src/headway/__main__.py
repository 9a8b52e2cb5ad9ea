"""``python -m headway``: the same as the ``headway`` command."""

from headway.cli.main import main

if __name__ == "__main__":
    main()
