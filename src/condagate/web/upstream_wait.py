"""Waiting for upstream fetches from request handlers: asynchronously, each fetch at most its bound.

Fetches run on their connector's own threads (``upstream.repodata_cache``); a request that has
nothing to serve until one finishes waits here, on the event loop, so that a slow upstream never
holds the threads that serve everything else.
"""

from __future__ import annotations

import asyncio

from starlette.concurrency import run_in_threadpool

from condagate.services import catalog
from condagate.services.context import Services
from condagate.upstream.repodata_cache import Pending


async def wait_for(pending: list[Pending]) -> None:
    if not pending:
        return
    waits = []
    for item in pending:
        wrapped = asyncio.wrap_future(item.future)
        wrapped.add_done_callback(lambda done: done.cancelled() or done.exception())  # outcomes are read later
        waits.append(asyncio.wait({wrapped}, timeout=item.wait))
    await asyncio.gather(*waits)


async def wait_for_feed(services: Services, feed: str) -> None:
    """Before listing a feed's packages: let first fetches of its upstream subdirs finish (bounded)."""
    await wait_for(await run_in_threadpool(lambda: catalog.upstream_fetches(services, feed=feed)))
