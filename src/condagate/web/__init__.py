"""HTTP: routers per area that translate requests into service calls."""
