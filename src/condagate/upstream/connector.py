"""What condagate knows about one upstream channel, and how to address it."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from condagate.conda.filters import NameFilter

SAME_ORIGIN = "same-origin"  # redirects within the connector's own scheme, host and port only (the default)
ANY_PUBLIC = "any-public"  # redirects to other hosts too, if public (or of the connector's own internal kind)
REDIRECT_POLICIES = (SAME_ORIGIN, ANY_PUBLIC)

BUILT_IN_CONNECTORS: dict[str, str] = {
    "anaconda": "https://repo.anaconda.com/pkgs/main",
    "conda-forge": "https://conda.anaconda.org/conda-forge",
}


@dataclass(frozen=True)
class ConnectorConfig:
    id: int
    name: str
    url: str
    subdirs: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    cache_minutes: int = 30
    timeout_seconds: int = 30
    username: str = ""
    password: str = ""
    token: str = ""
    allow_redirects: str = SAME_ORIGIN  # one of REDIRECT_POLICIES; enforced by upstream/http.py

    @property
    def name_filter(self) -> NameFilter:
        return NameFilter(self.include, self.exclude)

    def serves_subdir(self, subdir: str) -> bool:
        return not self.subdirs or subdir in self.subdirs

    def file_url(self, subdir: str, filename: str) -> str:
        return f"{self.url.rstrip('/')}/{subdir}/{filename}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username and not self.token else None

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_seconds)
