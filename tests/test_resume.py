"""Crash safety of a run: kill -9 at every phase, then rerun; one run per directory (the lock).

The fast tests build the on-disk state a kill leaves (a checkpoint without its trainer_state.json, a
half-written state file, a lock file of a dead process) and check what the rerun does with it. The slow
tests kill real runs with SIGKILL at each phase, in a subprocess, and compare the rerun with an
uninterrupted run: same metrics, same trained weights, and a training time that adds up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.resume import TrainClock, finished, resumable_checkpoint, trainer_state, trim_log
from tasks.run_identity import INCOMPLETE_DIR, LOCK_FILE, RunDirInUseError, hold_run_dir

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(root: Path, step: int, *, state: str | None) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_an_incomplete_checkpoint_is_set_aside_and_the_previous_one_resumed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    complete = _checkpoint(checkpoints, 2, state=json.dumps({"global_step": 2, "max_steps": 6}))
    _checkpoint(checkpoints, 4, state=None)  # killed after the weights, before the state (the Trainer's order)
    _checkpoint(checkpoints, 6, state='{"global_step": 6, "max_st')  # killed while writing the state itself
    assert resumable_checkpoint(checkpoints, tmp_path) == complete
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    aside = sorted(p.name.rsplit("-", 2)[0] for p in (tmp_path / INCOMPLETE_DIR).iterdir())  # name-<time>-<pid>
    assert aside == ["checkpoint-4", "checkpoint-6"]
    assert all((p / "model.safetensors").exists() for p in (tmp_path / INCOMPLETE_DIR).iterdir())  # kept
    assert resumable_checkpoint(checkpoints, tmp_path) == complete  # idempotent
    assert resumable_checkpoint(tmp_path / "missing", tmp_path) is None


def test_a_finished_checkpoint_is_not_trained_again():
    assert finished({"global_step": 6, "max_steps": 6})
    assert not finished({"global_step": 4, "max_steps": 6})


def test_the_training_clock_continues_from_the_checkpoint(tmp_path):
    clock = TrainClock()
    clock.on_train_begin(None, None, None)
    time.sleep(0.05)
    saved = {"global_step": 2, "stateful_callbacks": {"TrainClock": clock.state()}}
    assert saved["stateful_callbacks"]["TrainClock"]["attributes"]["train_seconds"] >= 0.05
    resumed = TrainClock.resumed_from(saved)
    assert resumed.seconds == pytest.approx(clock.state()["attributes"]["train_seconds"], abs=0.01)
    assert TrainClock.resumed_from({"global_step": 2}).seconds == 0.0  # a checkpoint written before the clock
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    trim_log(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_a_second_run_of_one_directory_stops_at_once_naming_the_first(tmp_path):
    """Two processes, one run dir: the second fails at once with the first one's pid; a dead one's lock is free."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from tasks.run_identity import "
         "hold_run_dir\nwith hold_run_dir(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with pytest.raises(RunDirInUseError, match=f"run directory {tmp_path} in use by pid {holder.pid}"), \
                hold_run_dir(tmp_path):
            pass
        assert time.perf_counter() - started < 1.0  # no waiting
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(holder.pid)  # the dead holder's stale lock file
    with hold_run_dir(tmp_path):  # the kernel released the lock with the process: taken over
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


# --- kill -9 at each phase of a real run ------------------------------------------------------------------------

# Runs one tiny training (bbc_topic, 6 steps, a checkpoint every 2) in its own process, as run.py would, and
# SIGKILLs itself at the phase named by argv[3]: the kill is exact, not timed.
DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    from hydra import compose, initialize_config_dir
    import transformers
    from tasks.preflight import validate
    from tasks.train import run

    runs_dir, checkpoint, phase = sys.argv[1:4]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    class KillAfterStep(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                die()

    save_state = transformers.TrainerState.save_to_json
    def kill_mid_checkpoint(self, path):  # checkpoint-4's weights are written, its trainer_state.json is not
        die() if self.global_step == 4 else save_state(self, path)

    callbacks = [KillAfterStep()] if phase == "between_checkpoints" else []
    if phase == "mid_checkpoint":
        transformers.TrainerState.save_to_json = kill_mid_checkpoint
    if phase == "final":  # half of final/ written: the weights, not the tokenizer
        save_model = transformers.Trainer.save_model
        def save_then_die(self, out=None, _internal_call=False):  # checkpoints save through it too: spared
            save_model(self, out, _internal_call)
            if not _internal_call:
                die()
        transformers.Trainer.save_model = save_then_die
    if phase == "evaluation":
        transformers.Trainer.evaluate = die
    with initialize_config_dir(config_dir=os.path.join(os.getcwd(), "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"runs_dir={runs_dir}", "logger=none", "trainer=cpu", "task=bbc_topic", "model=lsg_norm",
            f"model.checkpoint={checkpoint}", "model.max_length=256", "model.lsg.block_size=16",
            "model.lsg.sparse_block_size=16", "model.lsg.sparsity_factor=4", "trainer.max_steps=6",
            "trainer.save_steps=2", "trainer.logging_steps=1", "trainer.per_device_batch_size=2",
            "task.batch_size=2", "task.data.max_train_samples=12", "task.data.max_eval_samples=4"])
    record = run(validate(cfg), callbacks=callbacks)
    print("RECORD " + json.dumps(record))
""")


def _drive(runs_dir: Path, checkpoint: Path, phase: str = "none") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", DRIVER, str(runs_dir), str(checkpoint), phase], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _record(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RECORD "))[7:])


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, tmp_path_factory) -> tuple[dict, Path]:
    runs = tmp_path_factory.mktemp("uninterrupted")
    return _record(_drive(runs, tiny_bert)), runs


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["between_checkpoints", "mid_checkpoint", "final", "evaluation"])
def test_a_run_killed_at_any_phase_reruns_to_the_same_result(phase, uninterrupted, tiny_bert, tmp_path):
    reference, reference_runs = uninterrupted
    killed = _drive(tmp_path, tiny_bert, phase)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run_dir,) = tmp_path.glob("bbc_topic/*")
    assert not (run_dir / "metrics.json").exists()
    record = _record(_drive(tmp_path, tiny_bert))
    assert record["metrics"] == pytest.approx(reference["metrics"], rel=1e-5, abs=1e-6)
    (reference_dir,) = reference_runs.glob("bbc_topic/*")
    ours, theirs = load_file(run_dir / "final" / "model.safetensors"), load_file(reference_dir / "final" /
                                                                                  "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours)
    assert (run_dir / "final" / "tokenizer.json").exists() and not list(run_dir.glob(".final.*"))
    # 6 optimizer steps in all, never 7, and every step logged once
    state = trainer_state(run_dir / "checkpoints" / "checkpoint-6")
    assert state["global_step"] == 6

    def tokens(r: dict) -> float:  # tokens read by training: the epoch reached times the train split's tokens
        return r["train_tokens_per_second"] * r["train_seconds"]

    assert tokens(record) == pytest.approx(tokens(reference), rel=1e-6)
    entries = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in entries if "loss" in entry] == [1, 2, 3, 4, 5, 6]
    # training time adds up across the two processes: the stored clock, not only the rerun's part
    clock = state["stateful_callbacks"]["TrainClock"]["attributes"]["train_seconds"]
    if phase in ("final", "evaluation"):  # nothing left to train: the time is the checkpoint's
        assert record["train_seconds"] == pytest.approx(clock)
    assert record["train_seconds"] >= 0.5 * reference["train_seconds"]
    assert record["train_tokens_per_second"] <= 2 * reference["train_tokens_per_second"]  # was ~15x inflated
    if phase == "mid_checkpoint":
        assert [p.name.rsplit("-", 2)[0] for p in (run_dir / INCOMPLETE_DIR).iterdir()] == ["checkpoint-4"]


@pytest.mark.slow
def test_two_run_py_processes_on_one_directory(tiny_bert, tmp_path):
    """The real CLI twice on one run dir: the second exits at once with status 1 and the first's pid."""
    command = [sys.executable, "run.py", "task=bbc_topic", "model=lsg_norm", "logger=none", "trainer=cpu",
               f"runs_dir={tmp_path}", f"model.checkpoint={tiny_bert}", "model.max_length=256",
               "model.lsg.block_size=16", "model.lsg.sparse_block_size=16", "model.lsg.sparsity_factor=4",
               "trainer.max_steps=200", "trainer.per_device_batch_size=2", "task.batch_size=2",
               "task.data.max_train_samples=8", "task.data.max_eval_samples=2"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(f"bbc_topic/*/{LOCK_FILE}")) and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1].startswith("error: run directory ")
        assert f"in use by pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_a_run_killed_after_its_last_step_is_not_trained_again(tiny_bert, tmp_path):
    """The on-disk state of a kill while final/ was written: all steps checkpointed, no final/, no metrics.json."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from transformers import TrainerCallback

    from tasks.preflight import validate
    from tasks.train import run

    class Steps(TrainerCallback):
        taken = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.taken += 1

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = validate(compose(config_name="config", overrides=[
            f"runs_dir={tmp_path}", "logger=none", "trainer=cpu", f"model.checkpoint={tiny_bert}",
            "model.max_length=256", "model.lsg.block_size=16", "model.lsg.sparse_block_size=16",
            "model.lsg.sparsity_factor=4", "trainer.max_steps=2", "trainer.per_device_batch_size=2",
            "task.batch_size=2", "task.data.max_train_samples=8", "task.data.max_eval_samples=4"]))
    GlobalHydra.instance().clear()
    first = run(cfg)
    run_dir = Path(cfg.run_dir)
    (run_dir / "metrics.json").unlink()
    shutil.rmtree(run_dir / "final")
    steps = Steps()
    again = run(cfg, callbacks=[steps])
    assert steps.taken == 0  # resuming the Trainer from checkpoint-2 would have taken a third step
    assert again["metrics"] == first["metrics"]  # the same model, the same epoch, no extra timing key
    clock = trainer_state(run_dir / "checkpoints" / "checkpoint-2")["stateful_callbacks"]["TrainClock"]
    assert again["train_seconds"] == pytest.approx(clock["attributes"]["train_seconds"])
    assert again["train_seconds"] > 0
    assert (run_dir / "final" / "model.safetensors").exists()
