"""Run identity (tasks/run_identity.py): sweep points never share a run directory, hardware and logging knobs
do not change it, and a directory holding another configuration is refused unless forced (issue 15, defect 1)."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tasks.config import to_run_config
from tasks.run_identity import IDENTITY_FILE, RunDirConflictError, claim_run_dir, identity

CONF = Path(__file__).resolve().parents[1] / "conf"
TABLE2_TASKS = ("imdb", "arxiv", "patent", "scotus", "ecthr_a", "ecthr_b")
TABLE2_MODELS = ("truncated", "longformer", "bigbird", "lsg_local", "lsg_stride", "lsg_block_stride", "lsg_norm",
                 "lsg_pooling", "lsg_lsh")


@pytest.fixture(scope="module")
def run_dir():
    """overrides -> the composed run_dir (what Hydra's run and sweep dirs use)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides)).run_dir
    GlobalHydra.instance().clear()


def test_table2_sweep_points_get_their_own_directories(run_dir):
    """The defect: task=imdb and task=ecthr_a of one model resolved to one directory (the second was skipped)."""
    dirs = {run_dir("experiment=table2_classification", f"task={task}", f"model={model}")
            for task in TABLE2_TASKS for model in TABLE2_MODELS}
    dirs |= {run_dir("experiment=table2_legal", f"task={task}", f"model={model}")
             for task in ("scotus", "ecthr_a", "ecthr_b") for model in ("legal_bert", "lsg_legal_local")}
    assert len(dirs) == 60


def test_table4_tasks_and_tuning_modes_get_their_own_directories(run_dir):
    summarization = {run_dir("experiment=table4_summarization", f"task={task}")
                     for task in ("pubmed", "arxiv_sum", "multinews", "mediasum")}
    assert len(summarization) == 4
    long = ("experiment=table4_summarization", "model.max_length=16384", "task.max_length=16384")
    extrapolation = {run_dir(*long, *overrides) for overrides in (
        ["model.lsg.num_global_tokens=64", "trainer.tune=global_tokens"], ["model.lsg.num_global_tokens=64"],
        ["trainer.do_train=false"])}
    assert len(extrapolation) == 3


@pytest.mark.parametrize("override", ["trainer.logging_steps=7", "trainer.per_device_batch_size=4",
                                      "trainer.device=cpu", "logger=none", "+force=true", "trainer.save_steps=3"])
def test_hardware_and_logging_knobs_keep_the_directory(run_dir, override):
    base = ("task=bbc_topic", "model=lsg_local")
    assert run_dir(*base, override) == run_dir(*base)


@pytest.mark.parametrize("override", ["trainer.seed=1", "model.lsg.block_size=64", "task.learning_rate=3e-5",
                                      "model.max_length=1024", "trainer.tune=global_tokens"])
def test_what_changes_learning_changes_the_directory(run_dir, override):
    base = ("task=bbc_topic", "model=lsg_local")
    assert run_dir(*base, override) != run_dir(*base)


def test_a_directory_holding_another_configuration_is_refused(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        first, second = (to_run_config(compose(config_name="config", overrides=["task=bbc_topic", *extra]))
                         for extra in ([], ["task.learning_rate=3e-5"]))
    GlobalHydra.instance().clear()
    claim_run_dir(tmp_path, identity(first))
    claim_run_dir(tmp_path, identity(first))  # the same configuration may resume or be skipped
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RunDirConflictError, match=r"another configuration: task.learning_rate: .* \(stored\) != "
                                                   r"3e-05 \(now\).*\+force=true"):
        claim_run_dir(tmp_path, identity(second))
    claim_run_dir(tmp_path, identity(second), force=True)  # reruns from scratch: no stale checkpoint or result
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()
    assert json.loads((tmp_path / IDENTITY_FILE).read_text())["task.learning_rate"] == 3e-05


def test_a_result_written_before_run_ids_is_not_reused(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RunDirConflictError, match=r"without identity.json"):
        claim_run_dir(tmp_path, {"task.name": "imdb"})
