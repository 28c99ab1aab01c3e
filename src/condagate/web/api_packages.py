"""REST API: removing package files, versions and packages from a feed."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["packages"])
