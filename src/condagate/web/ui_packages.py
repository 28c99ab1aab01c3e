"""Package pages' management actions (delete a file, a version, a package)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
