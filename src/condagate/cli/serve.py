"""``condagate serve``: migrate, create the first administrator key, then run the HTTP server."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from condagate.settings import DEFAULT_PORT, Settings

err = Console(stderr=True)
log = logging.getLogger("condagate.serve")


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (env CONDAGATE_HOST; default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help=f"Port (env CONDAGATE_PORT; default {DEFAULT_PORT})")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder for the SQLite database and blobs (env CONDAGATE_DATA_DIR)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (env CONDAGATE_WORKERS; default 1)")] = None,
) -> None:
    """Start the condagate server (SQLite and a local folder unless configured otherwise)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from sqlalchemy.exc import SQLAlchemyError

    from condagate import telemetry
    from condagate.errors import BadRequest, StorageUnavailable
    from condagate.logs import configure_logging, granian_log_config
    from condagate.services.bootstrap import ensure_admin_key, housekeeping
    from condagate.services.connectors import ensure_built_in_connectors
    from condagate.services.context import Services
    from condagate.web.metrics import parse_allow_list

    settings = Settings.from_env(host=host, port=port, data_dir=data_dir, workers=workers)
    configure_logging(settings.log_level)
    if not _port_is_free(settings.host, settings.port):
        _stop(
            f"port {settings.port} on {settings.host} is already in use (another condagate?): "
            "stop it, or choose another with --port"
        )
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        _stop(f"the data folder {settings.data_dir} is a file: choose a folder with --data-dir")
    try:
        parse_allow_list(settings.metrics_allow)
    except BadRequest as exc:
        _stop(exc.message)
    own_metrics_dir = telemetry.MULTIPROC_ENV not in os.environ
    try:
        # First, before anything imports prometheus-client: the workers (forked) then count in shared files.
        metrics_dir = telemetry.prepare_multiprocess_dir(settings.data_dir)
        services = Services.open(settings)
    except (OSError, SQLAlchemyError) as exc:
        reason = getattr(exc, "strerror", None) or str(getattr(exc, "orig", None) or exc).splitlines()[0]
        _stop(f"cannot use the data folder {settings.data_dir}: {reason}")
    except ValueError as exc:  # a storage URL that names no bucket
        _stop(str(exc))
    try:
        services.blobs.check()
    except StorageUnavailable as exc:
        services.close()
        _stop(f"cannot use the blob storage {services.blobs.description}: {exc.message}")
    try:
        # Leftovers of a crash; only here, before any worker runs (a worker may be respawned while
        # others are writing their temp files).
        services.blobs.clean_temp_files()
        # Replicas starting together on one database: one at a time makes the first key and the
        # built-in connectors (each checks, then inserts).
        with services.locks.held("start-up"):
            started = ensure_admin_key(services)
            ensure_built_in_connectors(services)
            housekeeping(services)
    finally:
        services.close()
    if started.from_environment:
        err.print("Administrator API key set from CONDAGATE_ADMIN_API_KEY (user 'admin').", soft_wrap=True)
    elif started.new_key is not None:
        err.print("\n[bold]Created the administrator API key (shown once, stored hashed):[/bold]", soft_wrap=True)
        print(f"CONDAGATE_API_KEY={started.new_key}", flush=True)
        err.print(
            "Use it with the CLI (export CONDAGATE_API_KEY=...), the REST API (X-API-Key header) "
            "or a channel URL: http://api:KEY@HOST:PORT/conda/FEED\n",
            soft_wrap=True,
        )
    if started.environment_key_ignored:
        log.warning(
            "CONDAGATE_ADMIN_API_KEY is set but applies only at the first start, and no key with that value "
            "exists: it is ignored. Create keys with 'condagate apikey create', or a new administrator key "
            "on this host with 'condagate admin create-key'."
        )
    err.print(f"condagate listening on http://{settings.host}:{settings.port} (data in {settings.data_dir})")
    os.environ.update(settings.to_env())
    concurrent = _concurrent_requests_per_worker(settings)
    telemetry.clear_multiprocess_dir(metrics_dir)  # what start-up counted here is not a worker's
    server = Granian(
        "condagate.web.app:create_app_from_env",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=settings.workers,
        log_level=settings.log_level,  # type: ignore[arg-type]
        log_dictconfig=granian_log_config(),
        workers_kill_timeout=60,
        # Room for many slow or idle clients per worker (granian's default, 1024, is what a slowloris
        # attacker fills), and a short deadline for a request's head (the default is 30 s).
        backlog=4096,
        backpressure=concurrent,
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.header_timeout_seconds * 1000)),
    )
    try:
        server.serve()
    finally:
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def _port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on the address: granian shares ports (SO_REUSEPORT), so a second
    server would start anyway and split the requests between two databases."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _concurrent_requests_per_worker(settings: Settings) -> int:
    """``CONDAGATE_MAX_CONNECTIONS`` per worker, within what the open-file limit allows (raised to
    its hard limit first): every connection is a file descriptor, and the database and blobs need some."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    available = max(256, (soft - 256) // max(1, settings.workers))
    return max(64, min(settings.max_connections, available))
