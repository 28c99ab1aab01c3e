"""Nobody can lock the whole server out by removing the last administrator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers import Server, start_server


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("last-admin") / "data")
    yield server
    server.stop()


def test_the_last_administrator_cannot_be_removed(own_server: Server):
    with own_server.admin() as admin:
        refused = admin.delete("/api/grants", params={"principal": "user:admin", "permission": "admin"})
        assert refused.status_code == 409 and "nobody with the admin permission" in refused.json()["error"]["message"]
        assert admin.delete("/api/users/admin").status_code == 409
        assert admin.get("/api/users").status_code == 200  # nothing changed: the key still administers
        # with a second administrator (through a group) the first one may go
        assert admin.post("/api/users", json={"name": "second-admin"}).status_code == 201
        assert admin.post("/api/groups", json={"name": "Admins"}).status_code == 201
        assert admin.put("/api/groups/Admins/members/second-admin").status_code == 204
        grant = {"principal": "group:Admins", "permission": "admin"}
        assert admin.post("/api/grants", json=grant).status_code == 201
        second_key = admin.post("/api/apikeys", json={"user": "second-admin"}).json()["key"]
        assert admin.delete("/api/grants", params={"principal": "user:admin", "permission": "admin"}).status_code == 204
        assert admin.get("/api/users").status_code == 403  # the first one is no administrator any more
    with own_server.client(headers={"X-API-Key": second_key}) as second:
        assert second.get("/api/users").status_code == 200
        # now the group holds the last administrator: its only member cannot leave it
        assert second.delete("/api/groups/Admins/members/second-admin").status_code == 409
