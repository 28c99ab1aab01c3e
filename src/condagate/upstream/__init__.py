"""Connectors: fetching repodata and packages from upstream conda channels through an injected httpx client."""
