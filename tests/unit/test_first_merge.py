"""A proxy feed's subdir is never served as if its connector listed nothing: while the merge of a
connector's first data is being built by one request, another waits for it instead of serving the
snapshot built before that data came (which lacks the connector: an empty listing, once answered
``200`` to clients that cache it)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from condagate.errors import UpstreamTimeout, UpstreamUnavailable
from condagate.services import channel
from condagate.services.connectors import ConnectorSpec, create_connector
from condagate.services.context import Services
from condagate.services.feeds import create_feed
from condagate.settings import Settings

from upstream_channel import UpstreamChannel


def test_a_merge_of_first_data_is_waited_for_not_served_as_absent(
    tmp_path: Path, upstream: UpstreamChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = Services.open(Settings(data_dir=tmp_path / "data"))
    try:
        create_connector(services, ConnectorSpec(name="up", url=upstream.url))
        create_feed(services, name="proxy", connectors=["up"])
        upstream.faults.delay, upstream.faults.paths = 0.5, ("repodata.json",)
        before = channel.feed_subdir(services, "proxy", "linux-64")  # the fetch starts; no data yet
        assert before.pending and not before.snapshot.records
        concurrent.futures.wait([item.future for item in before.pending], timeout=30)
        upstream.faults.delay = 0.0

        real = services.repodata._rebuild
        building = threading.Event()

        def slow_rebuild(*args: Any, **kwargs: Any) -> Any:
            building.set()
            time.sleep(0.5)  # the merge of the first data takes a while (a large upstream)
            return real(*args, **kwargs)

        monkeypatch.setattr(services.repodata, "_rebuild", slow_rebuild)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(channel.feed_subdir, services, "proxy", "linux-64", refresh=False)
            assert building.wait(10)
            second = channel.feed_subdir(services, "proxy", "linux-64", refresh=False)  # during the merge
            first_result = first.result(timeout=30)
        for located in (first_result, second):
            try:
                located.require_data()
            except (UpstreamTimeout, UpstreamUnavailable):
                continue  # a 504/502 is honest; a 200 without the connector's records is not
            assert located.snapshot.records, "served the connector's absence as an empty listing"
        assert second.snapshot.records  # it waited for the merge
    finally:
        services.close()
