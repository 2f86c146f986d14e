"""Experiment entry point: `python run.py model=<name> task=<name> trainer=<name> [key=value ...]`.

    python run.py model=lsg_norm task=bbc_topic trainer=cpu
    python run.py -m model=lsg_local,lsg_norm task=bbc_topic           # a sweep; finished runs are skipped
    python run.py -m experiment=longdoc_demo                           # `make run`
    accelerate launch --num_processes 2 --cpu run.py ...               # data-parallel, one result
    python run.py ... +force=true                                      # rerun although metrics.json exists
    python run.py ... offline=true                                     # never contact the hub

Hydra composes conf/; the result is validated into typed dataclasses (tasks/config.py), and every check that
needs no weights (the checkpoint's config, the data files) runs (tasks/preflight.py) before any model or data
is loaded, then tasks/train.py runs it. A bad input prints one line, `error: <parameter>=<value> ...`, and
exits with status 2; a run directory held by another run exits with status 1. Docs: docs/pipeline.md.
"""

from __future__ import annotations

import os

# Online by default. The hub is contacted only for what is not local; `offline=true` (or the HF_*_OFFLINE variables
# the Makefile and tests set) turns that off.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from tasks.config import ConfigError  # noqa: E402  (also registers the schema with Hydra)
from tasks.preflight import validate  # noqa: E402
from tasks.run_identity import RunDirConflictError, RunDirInUseError  # noqa: E402


def fail(error: Exception, status: int) -> None:
    """One line on stderr instead of a traceback: the message already says what to change."""
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(status)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with open_dict(cfg):
        force = bool(cfg.pop("force", False))  # `+force=true`: not part of the schema
    try:
        run_cfg = validate(cfg)  # offline=true takes effect in there, before the checkpoint config is read
    except ConfigError as error:
        fail(error, 2)
    from tasks.train import run  # after validation: a bad config fails before the training stack is imported

    try:
        run(run_cfg, force=force)
    except ConfigError as error:  # found while loading (a hub dataset's labels, say): still before any training
        fail(error, 2)
    except (RunDirInUseError, RunDirConflictError) as error:
        fail(error, 1)


if __name__ == "__main__":
    main()
