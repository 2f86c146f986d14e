"""End to end through run.py's code path: one tiny training run per task kind, resume, sweep skip.

The models are real transformers models built from tiny random configs (hidden 32, 2 layers) saved to a
temp dir with the real MiniLM tokenizer; the data are the offline builders or generated files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import TrainerCallback

from tasks.config import RunConfig, to_run_config
from tasks.train import run

REPO = Path(__file__).resolve().parents[1]
TINY_LSG = ["model.max_length=256", "model.lsg.block_size=16", "model.lsg.sparse_block_size=16",
            "model.lsg.sparsity_factor=4"]


@pytest.fixture
def configure(tmp_path):
    """compose(overrides) -> RunConfig writing under tmp_path, no logger, 2 CPU steps."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        def make(*overrides: str) -> RunConfig:
            base = [f"runs_dir={tmp_path}", "logger=none", "trainer=cpu", "trainer.max_steps=2",
                    "trainer.per_device_batch_size=2", "task.batch_size=4", "task.data.max_train_samples=8",
                    "task.data.max_eval_samples=4"]
            return to_run_config(compose(config_name="config", overrides=base + list(overrides)))

        yield make
    GlobalHydra.instance().clear()


def check_run(record: dict, cfg: RunConfig, metric: str) -> None:
    run_dir = Path(cfg.run_dir)
    assert json.loads((run_dir / "metrics.json").read_text()) == record
    assert metric in record["metrics"] and record["n_samples"] >= 1
    assert (run_dir / "config.yaml").exists() and (run_dir / "train_log.jsonl").exists()
    assert any((run_dir / "checkpoints").glob("checkpoint-*"))


def test_classification_lsg_on_bbc_topic(configure, tiny_bert):
    cfg = configure("task=bbc_topic", "model=lsg_norm", f"model.checkpoint={tiny_bert}", *TINY_LSG)
    record = run(cfg)
    check_run(record, cfg, "macro_f1")
    assert record["attention"] == "lsg" and record["max_length"] == 256


def test_multi_label_with_local_files_and_the_none_label(configure, tiny_bert, tmp_path):
    data = tmp_path / "ecthr"
    data.mkdir()
    for split in ("train", "validation", "test"):
        rows = [{"text": [f"paragraph {i} about article {i % 3}", "more facts"], "labels": [i % 3] if i % 4 else []}
                for i in range(8)]
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = configure("task=ecthr_a", "model=lsg_local", f"model.checkpoint={tiny_bert}", "model.max_length=256",
                    "model.lsg.block_size=16", f"task.data.path={data}", "task.num_labels=null")
    record = run(cfg)
    check_run(record, cfg, "micro_f1")


def test_mlm_on_wikipedia_extracts(configure, tiny_bert):
    cfg = configure("task=wiki_mlm", "model=lsg_norm", f"model.checkpoint={tiny_bert}", *TINY_LSG)
    record = run(cfg)
    check_run(record, cfg, "bpc")
    assert record["metrics"]["bpc"] > 0 and 0 <= record["metrics"]["mlm_accuracy"] <= 1


def test_seq2seq_bert2bert_on_headlines(configure, tiny_bert):
    cfg = configure("task=bbc_headline", "model=lsg_bert2bert", f"model.checkpoint={tiny_bert}", *TINY_LSG,
                    "task.generation.num_beams=2", "task.generation.max_target_length=8")
    record = run(cfg)
    check_run(record, cfg, "rougeLsum")
    assert {"rouge1", "rouge2", "rougeL"} <= set(record["metrics"])


def test_seq2seq_bart_on_aclsum(configure, tiny_bart):
    cfg = configure("task=aclsum", "model=bart_base", f"model.checkpoint={tiny_bart}", "model.max_length=254",
                    "task.generation.num_beams=2", "task.generation.max_target_length=8")
    check_run(run(cfg), cfg, "rougeL")


def test_seq2seq_lsg_bart_on_aclsum(configure, tiny_bart):
    """model=lsg_bart: the BART encoder converted on the fly (positions tiled 256 -> 1024), decoder unchanged."""
    cfg = configure("task=aclsum", "model=lsg_bart", f"model.checkpoint={tiny_bart}", "model.max_length=1024",
                    "model.lsg.block_size=32", "task.generation.num_beams=2", "task.generation.max_target_length=8")
    record = run(cfg)
    check_run(record, cfg, "rougeLsum")
    assert record["attention"] == "lsg" and record["max_length"] == 1024
    saved = json.loads((Path(cfg.run_dir) / "final" / "config.json").read_text())
    assert saved["model_type"] == "lsg_bart" and saved["max_position_embeddings"] == 1024  # offset 2 is inside


def test_logged_loss_is_the_mean_under_gradient_accumulation(configure, tiny_bert):
    """4 micro-batches of 1 per step, lr 0: a fresh 5-class head logs ~ln 5, not 4 x ln 5 (Trainer's loss heuristic)."""
    cfg = configure("task=bbc_topic", "model=lsg_norm", f"model.checkpoint={tiny_bert}", *TINY_LSG,
                    "trainer.per_device_batch_size=1", "task.learning_rate=0", "trainer.logging_steps=1")
    run(cfg)
    losses = [entry["loss"] for line in (Path(cfg.run_dir) / "train_log.jsonl").read_text().splitlines()
              if "loss" in (entry := json.loads(line))]
    assert len(losses) == 2
    # The head starts near-uniform (logits ~0.05): the true mean cross-entropy is ln 5 within a few hundredths.
    assert losses == pytest.approx([math.log(5)] * 2, abs=0.05)


class Kill(TrainerCallback):
    """Stops training with an exception after `step` optimizer steps, as a killed job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


class FirstStep(TrainerCallback):
    """Records the global step at which training (re)starts."""

    step: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.step is None:
            self.step = state.global_step


def test_a_killed_run_resumes_from_its_last_checkpoint(configure, tiny_bert):
    cfg = configure("task=bbc_topic", "model=lsg_norm", f"model.checkpoint={tiny_bert}", *TINY_LSG,
                    "trainer.max_steps=4", "trainer.save_steps=2")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[Kill(3)])
    run_dir = Path(cfg.run_dir)
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir()
    resumed = FirstStep()
    run(cfg, callbacks=[resumed])
    assert resumed.step == 2  # steps 3-4 only: started from checkpoint-2
    assert (run_dir / "checkpoints" / "checkpoint-4").is_dir() and (run_dir / "metrics.json").exists()


def test_finished_runs_are_skipped_unless_forced(configure, tiny_bert):
    cfg = configure("task=bbc_topic", "model=lsg_norm", f"model.checkpoint={tiny_bert}", *TINY_LSG, "trainer.seed=1")
    first = run(cfg)
    again = run(cfg)
    assert again == first  # read back, not retrained
    forced = run(cfg, force=True)
    assert forced["date"] >= first["date"] and forced["wall_seconds"] != first["wall_seconds"]


@pytest.mark.slow
def test_run_py_sweep_runs_then_skips(tiny_bert, tmp_path):
    """The real CLI: `python run.py -m model=lsg_local,lsg_norm ...` twice; the second time both runs skip."""
    command = [sys.executable, "run.py", "-m", "model=lsg_local,lsg_norm", "task=bbc_topic", "logger=none",
               f"runs_dir={tmp_path}", f"model.checkpoint={tiny_bert}", *TINY_LSG, "trainer.max_steps=1",
               "trainer.per_device_batch_size=2", "task.batch_size=2", "task.data.max_train_samples=4",
               "task.data.max_eval_samples=2"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    results = sorted(tmp_path.glob("bbc_topic/*/metrics.json"))
    assert [p.parent.name.rsplit("-", 1)[0] for p in results] == ["bbc_topic-lsg_local-L256-s0",
                                                                  "bbc_topic-lsg_norm-L256-s0"]
    stamps = [p.stat().st_mtime_ns for p in results]
    second = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert second.stderr.count("skipping") + second.stdout.count("skipping") == 2
