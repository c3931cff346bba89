"""The state file: a snapshot epoch (see `git/epoch.py`) kept on disk, so a restart renders the same bytes.

The upstream's prefix cache outlives this process, so a restarted proxy must pick the same base,
order and fold point as before. They are kept in one small JSON file per repository under
`[context] state_dir` (default `$XDG_STATE_HOME/scout-diff-cache`, i.e.
`~/.local/state/scout-diff-cache`), named by a hash of the repository's path, and written
atomically (temporary file, then rename). A missing or unreadable file just means a fresh epoch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import attrs

from ..git.epoch import Epoch

log = logging.getLogger(__name__)


def state_file(state_dir: Path, repository: Path) -> Path:
    digest = hashlib.sha256(str(repository).encode()).hexdigest()[:16]
    return state_dir / f"epoch-{digest}.json"


def load_epoch(path: Path, repository: Path) -> Epoch | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring the unreadable state file %s: %s", path, error)
        return None
    if (
        not isinstance(data, dict)
        or data.get("repository") != str(repository)
        or not isinstance(data.get("base"), (str, type(None)))
        or not isinstance(data.get("order"), list)
        or not all(isinstance(item, str) for item in data["order"])
        or not isinstance(data.get("folded"), (str, type(None)))
        or not isinstance(data.get("key"), (str, type(None)))
        or not isinstance(data.get("over_window"), (list, type(None)))
        or not all(isinstance(item, str) for item in data.get("over_window") or [])
    ):
        log.warning("ignoring the state file %s: not one this version wrote for %s", path, repository)
        return None
    chosen = data.get("over_window")
    return Epoch(data["base"], tuple(data["order"]), data.get("folded"), data.get("key"), _paths(chosen))


def _paths(listed: list[str] | None) -> tuple[str, ...] | None:
    return tuple(listed) if listed is not None else None


def save_epoch(path: Path, repository: Path, epoch: Epoch) -> None:
    """Best effort: a state directory we cannot write costs a cold cache after restart, not service."""
    payload = {
        "repository": str(repository),
        "base": epoch.base,
        "order": list(epoch.order),
        "folded": epoch.folded,
        "key": epoch.key,
        "over_window": list(epoch.over_window) if epoch.over_window is not None else None,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".epoch-", delete=False, encoding="utf-8") as out:
            json.dump(payload, out)
        os.replace(out.name, path)
    except OSError as error:
        log.warning("cannot save the snapshot epoch to %s: %s", path, error)


@attrs.frozen
class StateFile:
    """The state file of one repository, written from the event loop in a worker thread."""

    path: Path
    repository: Path

    @classmethod
    def under(cls, state_dir: Path, repository: Path) -> StateFile:
        return cls(state_file(state_dir, repository), repository)

    def load(self) -> Epoch | None:
        """The saved epoch, if any (blocking)."""
        return load_epoch(self.path, self.repository)

    async def save(self, epoch: Epoch) -> None:
        await asyncio.to_thread(save_epoch, self.path, self.repository, epoch)
