"""The ``condagate`` command line: ``serve`` runs the server; the rest talk to one over its REST API."""
