"""The state a reload replaces, built by one function at start and at reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from scout_diff_cache.config import Config, load_config
from scout_diff_cache.errors import ProxyError
from scout_diff_cache.git.diff import WorkingDiff
from scout_diff_cache.git.snapshot import Snapshot
from scout_diff_cache.metrics import Metrics
from scout_diff_cache.shared import SharedTasks
from scout_diff_cache.state import Wiring, build_live
from scout_diff_cache.usage import Usage

from support import GitRepo, write_config


async def no_warm_up(snapshot: Snapshot, diff: WorkingDiff) -> Usage | None:
    return None


async def no_probe(systems: int) -> ProxyError | None:
    return None


async def no_answer(method: str, url: str, body: dict[str, Any] | None) -> Any:
    return None


def with_context(config: Config, **changes: Any) -> Config:
    return attrs.evolve(config, context=attrs.evolve(config.context, **changes))


async def test_a_reload_keeps_what_its_change_leaves_valid(tmp_path: Path, git_repo: GitRepo) -> None:
    config = load_config(write_config(tmp_path, {"repository": {"path": "repo"}, "context": {"state_dir": "state"}}))
    wiring = Wiring(Metrics(), no_warm_up, no_probe, SharedTasks(), no_answer)
    live = build_live(config, wiring)
    kept = build_live(with_context(config, max_conversations=3), wiring, live)
    assert kept.epochs is live.epochs and kept.conversations is live.conversations and kept.layouts is live.layouts
    assert live.conversations.capacity == 3
    relaid = build_live(with_context(config, layout="strict"), wiring, live)
    assert relaid.layouts is not live.layouts and relaid.epochs is live.epochs
    moved = build_live(with_context(config, state_dir=tmp_path / "elsewhere"), wiring, live)
    assert moved.epochs is not live.epochs and moved.conversations is not live.conversations
    assert moved.layouts is live.layouts and moved.windows is live.windows
    upstream = attrs.evolve(config.upstream, context_window=8192)
    rewindowed = build_live(attrs.evolve(config, upstream=upstream), wiring, live)
    assert rewindowed.windows is not live.windows and rewindowed.windows.known.tokens == 8192
    for built in (live, moved):
        await built.epochs.close()
