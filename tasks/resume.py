"""Resuming a killed run: which checkpoint to start from, and a training clock that survives the kill.

A run can be killed (kill -9, a pre-empted node) at any point: between checkpoints, in the middle of a
checkpoint write, while `final/` is written or during evaluation. The rerun must finish as if nothing had
happened, so:

* `resumable_checkpoint` picks the newest *complete* `checkpoint-N`. The HF Trainer writes
  `trainer_state.json` last, so a checkpoint is complete when that file parses; an incomplete one (model
  written, state not yet) is moved aside to `<run dir>/incomplete/` for inspection, never deleted, and never
  resumed from (resuming from it failed with `FileNotFoundError` on every rerun).
* `finished` says whether a checkpoint already holds the whole training budget: the run then skips
  training (a Trainer resumed from its last checkpoint trains one step too many) and only writes `final/`
  and evaluates.
* `TrainClock` stores the training seconds spent so far in each checkpoint's `trainer_state.json`, so
  `train_seconds` (and the throughput derived from it) add up across resumes: time of the steps the result
  holds, not only of the last process. Steps lost to a kill (after the last checkpoint) are not counted:
  they were redone.
* `trim_log` drops the `train_log.jsonl` lines of those lost steps, so every step is logged once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from lsg.atomic import staged_file
from tasks.run_identity import INCOMPLETE_DIR

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # the Trainer's own name (transformers.trainer.TRAINER_STATE_NAME)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def trainer_state(checkpoint: Path) -> dict[str, Any] | None:
    """The parsed `trainer_state.json` of a checkpoint, or None when it is missing or half written."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "global_step" in state else None


def resumable_checkpoint(checkpoints: Path, run_dir: Path) -> Path | None:
    """The newest complete checkpoint under `checkpoints`, after moving incomplete newer ones aside.

    Args:
        checkpoints: the Trainer's output dir (`<run dir>/checkpoints`); may not exist.
        run_dir: the run directory; incomplete checkpoints go to `<run_dir>/incomplete/<name>-<time>`.

    Returns:
        The checkpoint to resume from, or None to start from scratch.
    """
    if not checkpoints.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in checkpoints.iterdir()
                    if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True)
    for _, checkpoint in found:
        if trainer_state(checkpoint) is not None:
            return checkpoint
        aside = run_dir / INCOMPLETE_DIR / f"{checkpoint.name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(checkpoint, aside)  # out of the Trainer's `checkpoint-*` glob: neither resumed nor rotated
        log.warning("%s is incomplete (no readable %s; the run was killed while writing it): moved to %s",
                    checkpoint, STATE_FILE, aside)
    return None


def finished(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's trainer state already holds every planned optimizer step."""
    return state.get("max_steps", 0) > 0 and state["global_step"] >= state["max_steps"]


class TrainClock(TrainerCallback, ExportableState):
    """Training seconds across resumes: `offset` (read from the resumed checkpoint) plus this process's.

    `state()` is what the Trainer writes into each checkpoint's `trainer_state.json` (under
    `stateful_callbacks`), in the same file write that marks the checkpoint complete.
    """

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.started: float | None = None

    @classmethod
    def resumed_from(cls, state: dict[str, Any] | None) -> TrainClock:
        """A clock continuing from a checkpoint's trainer state (0 s when None or written before the clock)."""
        saved = ((state or {}).get("stateful_callbacks") or {}).get(cls.__name__) or {}
        return cls(float(saved.get("attributes", {}).get("train_seconds", 0.0)))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Training seconds so far: the resumed checkpoint's plus this process's."""
        return self.offset + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"train_seconds": self.seconds}}


def trim_log(path: Path, step: int) -> None:
    """Drop the entries of `train_log.jsonl` after optimizer step `step` (redone after a resume)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut by the kill
            continue
    with staged_file(path) as staging:
        staging.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
