"""Experiment entry point: `python run.py model=<name> task=<name> trainer=<name> [key=value ...]`.

    python run.py model=lsg_norm task=bbc_topic trainer=cpu
    python run.py -m model=lsg_local,lsg_norm task=bbc_topic           # a sweep; finished runs are skipped
    python run.py -m experiment=longdoc_demo                           # `make run`
    accelerate launch --num_processes 2 --cpu run.py ...               # data-parallel, one result
    python run.py ... +force=true                                      # rerun although metrics.json exists
    python run.py ... offline=true                                     # never contact the hub

Hydra composes conf/; the result is validated into typed dataclasses (tasks/config.py) before any model
or data is loaded, then tasks/train.py runs it. Docs: docs/pipeline.md.
"""

from __future__ import annotations

import os

# Online by default. The hub is contacted only for what is not local; `offline=true` (or the HF_*_OFFLINE variables
# the Makefile and tests set) turns that off.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from lsg.hub import go_offline  # noqa: E402
from tasks.config import to_run_config  # noqa: E402  (also registers the schema with Hydra)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with open_dict(cfg):
        force = bool(cfg.pop("force", False))  # `+force=true`: not part of the schema
    run_cfg = to_run_config(cfg)
    if run_cfg.offline:
        go_offline()
    from tasks.train import run  # after validation: a bad config fails before torch is imported

    run(run_cfg, force=force)


if __name__ == "__main__":
    main()
