"""Use cases, one module each; they call the conda domain, the stores and security."""
