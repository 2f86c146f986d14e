"""What makes two runs different: the run id in every run directory's name, and the stored-config check.

Every sweep point must get its own directory (its checkpoints, metrics.json and W&B run), whatever the sweep
varies: the task, the model, a length, a seed, a tuning mode or any other override. `run_id` hashes the whole
composed config minus what does not change what is learned (where files go, logging, hardware knobs), so
`runs/<group>/<task>-<model>-L<length>-s<seed>-<run_id>/` is readable and unique. The hash is taken over the
*unresolved* config (`${task.default_encoder}` stays a name, not a path that differs between machines), and over
non-default values only, so adding a schema field with a default leaves existing run ids unchanged.

`claim_run_dir` then refuses a directory whose stored `identity.json` differs (naming the differing keys): the
hash alone would not notice a schema default that changed between versions.

`hold_run_dir` makes a run directory one run's at a time: an exclusive `flock` on `<run dir>/run.lock`,
held for the whole run. A second run of the same directory (a duplicated sweep, a job submitted twice)
stops at once with "run directory ... in use by pid N" instead of training into the same checkpoints. The
kernel drops the lock when its process dies, however it dies, so a stale lock file is simply taken over.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys (and key prefixes) that do not change what a run learns or measures. `force` must be here, or
# `+force=true` would move the run to another directory instead of rerunning it.
NOT_IDENTITY = (
    "hydra", "force", "runs_dir", "run_dir", "run_name", "run_id", "group", "experiment_name", "logger",
    "trainer.name", "trainer.device", "trainer.per_device_batch_size", "trainer.eval_batch_size",
    "trainer.save_steps", "trainer.save_total_limit", "trainer.logging_steps", "trainer.dataloader_workers",
    "trainer.save_final", "trainer.gradient_checkpointing",
)
IDENTITY_FILE = "identity.json"
LOCK_FILE = "run.lock"
INCOMPLETE_DIR = "incomplete"  # where tasks/resume.py moves checkpoints a kill left half written
# What a forced rerun deletes: a rerun must not resume from, or report, the previous configuration's files.
RUN_OUTPUTS = ("checkpoints", INCOMPLETE_DIR, "final", "metrics.json", "train_log.jsonl", IDENTITY_FILE)


class RunDirConflictError(RuntimeError):
    """A run directory already holds a run of another configuration."""


class RunDirInUseError(RuntimeError):
    """Another live process is running in this run directory."""


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; empty mappings stay values."""
    if not isinstance(node, dict) or not node:
        return {prefix.removesuffix("."): node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def _excluded(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in NOT_IDENTITY)


@functools.cache  # the schema does not change within a process; building it is most of a compose's time
def _schema_defaults() -> dict[str, Any]:
    from tasks.config import RunConfig  # lazy: tasks.config registers this module's resolver

    return flatten(OmegaConf.to_container(OmegaConf.structured(RunConfig), resolve=False))


def identity(cfg: Any, *, non_default_only: bool = False) -> dict[str, Any]:
    """The run's identity: {dotted key: value} of every key that changes what is learned.

    Args:
        cfg: the composed config: a DictConfig (values unresolved, as the run id hashes them) or a
            `RunConfig` dataclass (values as resolved, as `identity.json` stores them).
        non_default_only: drop keys equal to the schema's default (what the run id hashes).

    Returns:
        A sorted flat dict, JSON-serialisable.
    """
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    flat = flatten(OmegaConf.to_container(node, resolve=False))
    defaults = _schema_defaults() if non_default_only else {}
    return {key: value for key, value in sorted(flat.items())
            if not _excluded(key) and not (key in defaults and defaults[key] == value)}


def run_id(*, _root_: DictConfig) -> str:
    """`${lsg_run_id:}` in conf/config.yaml: 8 hex digits of the identity's hash (OmegaConf passes the root)."""
    text = json.dumps(identity(_root_, non_default_only=True), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per key whose value differs (or exists on one side only): `key: stored != now`."""
    return [f"{key}: {stored.get(key, '<absent>')!r} (stored) != {current.get(key, '<absent>')!r} (now)"
            for key in sorted(stored.keys() | current.keys()) if stored.get(key) != current.get(key)]


def claim_run_dir(run_dir: Path, current: dict[str, Any], *, force: bool = False) -> None:
    """Make `run_dir` this configuration's: check (or, when `force`, clear) what it holds, then record `current`.

    Args:
        run_dir: the run directory (created when missing).
        current: `identity(cfg)` of the run about to start.
        force: delete the previous run's outputs (`RUN_OUTPUTS`) instead of checking them.

    Raises:
        RunDirConflictError: `run_dir` holds a run of another configuration (every differing key is named).
    """
    stored_path = run_dir / IDENTITY_FILE
    if force:
        for name in RUN_OUTPUTS:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif stored_path.exists():
        changed = differences(json.loads(stored_path.read_text(encoding="utf-8")), current)
        if changed:
            raise RunDirConflictError(
                f"{run_dir} holds a run of another configuration: " + "; ".join(changed)
                + ". Rerun it with +force=true, or choose another runs_dir=")
    elif (run_dir / "metrics.json").exists():
        raise RunDirConflictError(f"{run_dir} holds a result without {IDENTITY_FILE} (written before run ids): "
                                  "rerun it with +force=true, or choose another runs_dir=")
    run_dir.mkdir(parents=True, exist_ok=True)
    from lsg.atomic import write_json  # lazy: composing a config (the resolver above) should not import torch

    write_json(stored_path, current)


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's exclusive lock for the body (POSIX `flock`; the file records the holder's pid).

    Args:
        run_dir: the run directory (created when missing).

    Raises:
        RunDirInUseError: another live process holds the lock (its pid is named); raised at once, no waiting.
    """
    import fcntl  # POSIX only: the pipeline's run directories live on Linux/macOS machines

    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirInUseError(f"run directory {run_dir} in use by pid {holder}; wait for that run to end, "
                                   "or choose another runs_dir=") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race with a waiting run)
