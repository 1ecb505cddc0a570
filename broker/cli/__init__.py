"""The ``token-broker`` command: ``main`` parses the command line; ``sandbox_mode`` runs
the gateway on the embedded sandbox; ``doctor`` checks a configuration against the world;
``text`` holds what it prints."""

from broker.cli.main import main

__all__ = ["main"]
