"""The sandbox's HTTP handlers, one module per group of upstream endpoints."""
