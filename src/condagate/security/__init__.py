"""Principals, permissions and API keys; ``authorize`` decides from data handed to it."""
