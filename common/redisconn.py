"""Redis clients for every deployment the server supports: one server, a Redis Cluster, a primary watched by
Redis Sentinel, any of them over TLS.

`connect` (asyncio) and `connect_sync` (threads, the supervisor, gunicorn's master) build the client that
`REDIS_URL` calls for. A cluster is detected (`INFO cluster` says `cluster_enabled:1`) or forced with
`REDIS_CLUSTER=1` (`0` forbids it); then redis-py's cluster client is returned, typed as the plain client
because the server only uses commands both have (see docs/operations.md, "Redis Cluster"), and the few
places that differ ask `is_cluster`:
- MGET across slots: `mget` splits it per slot;
- a script queued on a pipeline: `Registry.claim_in` sends its text (EVAL), since a cluster pipeline cannot
  load it.

Every key is placed on purpose (common/keys.py): a call's hash, a process's keys (one hash tag each), the
dispatch stream and the call index on a slot of their own.

With `REDIS_SENTINELS` (`host:port,...`), the primary of `REDIS_SENTINEL_MASTER` is asked of the sentinels
at each new connection, so clients follow a failover; REDIS_URL then only gives the credentials and database.

`rediss://` URLs use TLS. A managed Redis with a certificate of its own (Heroku's is self-signed) is reached
with `REDIS_TLS_CA` (a CA file to check it against) or, trusting the network instead, `REDIS_TLS_VERIFY=0`.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Mapping
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncNode
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode as SyncNode
from redis.cluster import ClusterPipeline as SyncClusterPipeline
from redis.cluster import RedisCluster as SyncCluster
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel as SyncSentinel

log = logging.getLogger("pbx.redis")


def tls_options(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TLS keyword arguments of a redis-py client for `url` ({} unless it is `rediss://`)."""
    if not url.startswith("rediss://"):
        return {}
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    ca = env.get("REDIS_TLS_CA", "").strip()
    if ca:
        options["ssl_ca_certs"] = ca
    if env.get("REDIS_TLS_VERIFY", "1").strip().lower() in ("0", "false", "no", "off"):
        options["ssl_cert_reqs"] = ssl.CERT_NONE
        options["ssl_check_hostname"] = False
    return options


def cluster_nodes(environ: Mapping[str, str] | None = None) -> list[tuple[str, int]]:
    """`REDIS_CLUSTER_NODES` (`host:port,host:port`): more nodes to learn the cluster from, besides the one
    REDIS_URL names, so that a process started while that node is down still finds the others."""
    env = os.environ if environ is None else environ
    return _host_ports(env.get("REDIS_CLUSTER_NODES", ""))


def sentinels(environ: Mapping[str, str] | None = None) -> list[tuple[str, int]]:
    """`REDIS_SENTINELS` (`host:port,host:port`): the sentinels that watch the primary, if any."""
    env = os.environ if environ is None else environ
    return _host_ports(env.get("REDIS_SENTINELS", ""))


def _host_ports(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _sentinel_options(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The primary's name, the options of the connections to it (REDIS_URL's credentials and database, TLS),
    and those of the connections to the sentinels."""
    parsed = parse_url(url) if url else {}
    primary = {k: parsed[k] for k in ("username", "password", "db") if parsed.get(k) is not None}
    timeouts: dict[str, Any] = {
        k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options
    }
    name = os.environ.get("REDIS_SENTINEL_MASTER", "").strip() or "mymaster"
    return name, {**primary, **options}, {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, **timeouts}


def cluster_wanted(url: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `url` names a Redis Cluster: `REDIS_CLUSTER` when set (1/0), else yes with
    `REDIS_CLUSTER_NODES`, else asked of the server."""
    env = os.environ if environ is None else environ
    forced = env.get("REDIS_CLUSTER", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if cluster_nodes(env):
        return True
    return _detect(url, env)


_detected: dict[str, bool] = {}


def _detect(url: str, env: Mapping[str, str], attempts: int = 3) -> bool:
    if url in _detected:
        return _detected[url]
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, **tls_options(url, env))
    try:
        for attempt in range(attempts):
            try:
                info = client.info("cluster")
                break
            except redis.ResponseError:  # INFO disabled or renamed (some managed services): one server
                info = {}
                break
            except (redis.RedisError, OSError) as exc:
                if attempt + 1 < attempts:
                    time.sleep(1.0)
                    continue
                # Not cached: the next client asks again.
                log.warning(
                    "could not ask Redis whether it is a cluster (%s): taken as a single server; set "
                    "REDIS_CLUSTER=1 if it is one",
                    exc,
                )
                return False
    finally:
        client.close()
    found = bool(info.get("cluster_enabled"))
    _detected[url] = found
    if found:
        log.info("REDIS_URL points at a Redis Cluster")
    return found


class _AsyncCluster(AsyncCluster):
    """redis-py's cluster client, whose "no node reachable" and "slot not covered" errors (not RedisErrors)
    come out as the ConnectionError every caller already handles as Redis being away."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster unavailable: {exc}") from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> AsyncClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = _AsyncPipeline  # type: ignore[type-abstract]
        return pipe


class _AsyncPipeline(AsyncClusterPipeline):
    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster unavailable: {exc}") from exc


class _SyncCluster(SyncCluster):
    """The same for threads."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster unavailable: {exc}") from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> SyncClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = _SyncPipeline
        return pipe


class _SyncPipeline(SyncClusterPipeline):
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster unavailable: {exc}") from exc


def connect(url: str, max_connections: int = 64, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for `url`: a plain one on a blocking pool (a burst of new calls waits for a free
    connection instead of failing), or a cluster client.

    Detection connects to the server once, synchronously: call this at start-up, not on the media path."""
    options: dict[str, Any] = {**tls_options(url), **kwargs}
    if sentinels():
        name, primary, watchers = _sentinel_options(url, options)
        sentinel = AsyncSentinel(sentinels(), sentinel_kwargs=watchers)
        client: aioredis.Redis = sentinel.master_for(
            name, max_connections=max_connections, socket_keepalive=True, **primary
        )
        return client
    if cluster_wanted(url):
        cluster = _AsyncCluster.from_url(
            url,
            startup_nodes=[AsyncNode(h, p) for h, p in cluster_nodes()],
            max_connections=max_connections,
            socket_keepalive=True,
            **options,
        )
        return cast(aioredis.Redis, cluster)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, health_check_interval=10, socket_keepalive=True,
        **options,
    )  # fmt: skip
    return aioredis.Redis(connection_pool=pool)


def connect_sync(url: str, **kwargs: Any) -> redis.Redis:
    """A client for threads and blocking code (the supervisor, the heartbeat thread, gunicorn's master)."""
    options: dict[str, Any] = {**tls_options(url), **kwargs}
    if sentinels():
        name, primary, watchers = _sentinel_options(url, options)
        sentinel = SyncSentinel(sentinels(), sentinel_kwargs=watchers)
        client: redis.Redis = sentinel.master_for(name, **primary)
        return client
    if cluster_wanted(url):
        cluster: SyncCluster = _SyncCluster.from_url(
            url, startup_nodes=[SyncNode(h, p) for h, p in cluster_nodes()], **options
        )
        return cast(redis.Redis, cluster)
    return redis.Redis.from_url(url, **options)


def is_cluster(client: Any) -> bool:
    return isinstance(client, AsyncCluster | SyncCluster)


async def mget(client: aioredis.Redis, keys: list[Any]) -> list[Any]:
    """MGET, split per slot on a cluster (keys of several slots cannot go in one command there)."""
    if is_cluster(client):
        return list(await cast(AsyncCluster, client).mget_nonatomic(keys))
    return list(await client.mget(keys))


def mget_sync(client: redis.Redis, keys: list[Any]) -> list[Any]:
    if is_cluster(client):
        return list(cast(SyncCluster, client).mget_nonatomic(keys))
    return list(cast(Any, client.mget(keys)))
