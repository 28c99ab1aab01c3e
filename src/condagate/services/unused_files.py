"""Removing files nobody used lately from this host's folders of encodings (``encoded_files``,
``shard_files``): never failing, since what cannot be removed now is left for the next time."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def listed(folder: str | Path) -> list[os.DirEntry[str]]:
    """The folder's entries: none when it is not there, none (and a warning) when it cannot be listed."""
    try:
        return list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("could not list %s to remove unused files: %s", folder, exc)
        return []


def remove_if_unused(entry: os.DirEntry[str], cutoff: float) -> None:
    """Remove ``entry`` if it is a file nobody touched since ``cutoff`` (``time.time()``); another worker
    may have removed it already."""
    try:
        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
            os.unlink(entry.path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", entry.path, exc)
