"""What operators see: structured logs, Prometheus metrics, event-loop metrics, and the
per-request record behind the canonical ``request_finished`` line."""
