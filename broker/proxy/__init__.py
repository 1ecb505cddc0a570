"""What may be forwarded and how: the raw-target rules, the route allowlist, CORS,
per-client limits, and the relay that forwards a request and streams the answer back."""
