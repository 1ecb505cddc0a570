"""``python -m broker``: the same as the ``token-broker`` command."""

from broker.cli.main import main

if __name__ == "__main__":
    main()
