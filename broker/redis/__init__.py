"""The shared backend for many replicas: one Redis link, sealed shared tokens, mint
leases, the cluster-wide rate budget, shared sessions and revocations, events, census.

Only the composition root (``broker.gateway``) imports this package, and only when
``cache.backend = "redis"``: it needs the ``redis`` extra."""

from broker.redis.backend import RedisBackend, open_redis_backend
from broker.redis.reloads import ClusterReloads

__all__ = ["ClusterReloads", "RedisBackend", "open_redis_backend"]
