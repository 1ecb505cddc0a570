"""The ``token-broker`` command: ``main`` parses the command line; ``sandbox_mode`` runs
the gateway on the embedded sandbox; ``text`` holds what it prints."""
