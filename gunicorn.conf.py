"""Gunicorn settings for the frontend (`web` in the Procfile)."""

import os

# HOST: the address to listen on (every interface unless set; the tests and benchmarks use 127.0.0.1).
bind = f"{os.environ.get('HOST') or '0.0.0.0'}:{os.environ.get('PORT', '8080')}"
# One frontend per two cores unless set: common/config.py default_web_concurrency's rule (measured, not
# guessed), written out: gunicorn reads this file before it puts the working directory on sys.path.
workers = int(os.environ.get("WEB_CONCURRENCY") or max(1, (os.cpu_count() or 1) // 2))
worker_class = "aiohttp.GunicornUVLoopWebWorker"
# Calls are long-lived WebSockets: never kill a worker for a slow request.
timeout = 0
# SIGTERM drains: live calls get DRAIN_TIMEOUT to end, then a few seconds to be hung up.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "0") or 0) or int(
    float(os.environ.get("DRAIN_TIMEOUT", "30") or 30) + 10
)
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def when_ready(server: object) -> None:
    """The listeners are bound, no frontend started yet: say once what this deployment leaves open."""
    from common import logs
    from common.config import Settings
    from frontend.exposure import log_report

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        # Every frontend will refuse to start with the same error, and say so.
        server.log.error("start-up report skipped: %s", exc)  # type: ignore[attr-defined]
        return
    logs.setup(settings.log_level, "web")
    log_report(settings, server.cfg.address)  # type: ignore[attr-defined]
    # The master's Redis client (for its frontends' exits), made now while REDIS_URL's node is up.
    from frontend import arbiter

    try:
        arbiter.client(settings)
    except Exception as exc:
        server.log.warning("no Redis client yet: %s", exc)  # type: ignore[attr-defined]


def post_worker_init(worker: object) -> None:
    """Keep the modules and app built at start out of every later garbage collection (shorter pauses)."""
    import gc

    gc.freeze()


def worker_int(worker: object) -> None:
    """SIGINT/SIGQUIT (Ctrl-C, quick shutdown): the frontend hangs its calls up without draining."""
    from frontend.hub import Hub

    Hub.stop_now = True


def child_exit(server: object, worker: object) -> None:
    """A frontend died (or stopped): its calls are hung up by their owners at once, not after the TTL."""
    from frontend.arbiter import forget_worker

    forget_worker(worker.pid)  # type: ignore[attr-defined]


# No control socket in the home directory (gunicorn >= 24 creates one by default).
control_socket_disable = True
