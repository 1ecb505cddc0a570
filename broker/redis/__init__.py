"""The shared backend for many replicas: one Redis link, sealed shared tokens, mint
leases, the cluster-wide rate budget, shared sessions and revocations, events, census.

Only the composition root (``broker.gateway``) imports this package."""
