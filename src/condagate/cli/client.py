"""The REST API client the client commands share: URL, key, errors as one-line messages."""

from __future__ import annotations

import os
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

err = Console(stderr=True)
DEFAULT_URL = "http://127.0.0.1:8624"


class ApiClient:
    def __init__(self, url: str | None, api_key: str | None) -> None:
        self.url = (url or os.environ.get("CONDAGATE_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("CONDAGATE_API_KEY")
        headers = {"X-API-Key": key} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(30.0, read=600.0))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach condagate at {self.url}: {exc}")
        return self.check(response)

    def text(self, path: str, **kwargs: Any) -> str:
        """A GET whose answer is text (CSV exports), with the same one-line failures as ``request``."""
        try:
            response = self.http.get(path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach condagate at {self.url}: {exc}")
        if response.status_code >= 400:
            self.check(response)
        return response.text

    @staticmethod
    def check(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text.strip() or response.reason_phrase
            fail(f"{response.status_code}: {message}")
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def fail(message: str) -> NoReturn:
    """One unwrapped line on stderr (scripts grep it), then exit 1."""
    err.print(f"[red]error:[/red] {' '.join(message.split())}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(1)
