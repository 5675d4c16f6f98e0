"""Redis plumbing: URLs, the client, outage detection, pub/sub, an embedded server."""

from app.redis.client import create_redis, is_cluster
from app.redis.outage import as_text, guarded

__all__ = ["as_text", "create_redis", "guarded", "is_cluster"]
