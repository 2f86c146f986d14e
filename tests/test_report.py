"""The metrics.json schema, its one record builder, and the aggregator (tasks/report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsg.atomic import write_json
from tasks.report import RECORD_KEYS, build_record, check_record, read_record, report


def fields(**overrides) -> dict:
    """The keys a run supplies itself (build_record derives the rest)."""
    base = {"experiment": "demo", "task": "bbc_longdoc", "model": "lsg_norm", "attention": "lsg",
            "checkpoint": "/models/minilm", "max_length": 4096, "seed": 0, "split": "test", "n_samples": 100,
            "train_seconds": 10.0, "eval_seconds": 2.0, "wall_seconds": 13.0, "trainable_parameters": 5,
            "parameters": 7, "run_dir": "runs/demo/lsg_norm-L4096-s0"}
    return {**base, **overrides}


def test_record_has_the_schema_the_directions_and_the_rates():
    metrics = {"accuracy": 65.0, "macro_f1": 61.5, "loss": 0.9}
    record = build_record(metrics=metrics, device="cpu", train_tokens=500.0, eval_tokens=300, **fields())
    assert tuple(record) == RECORD_KEYS
    assert record["metrics"] == metrics
    assert record["higher_is_better"] == {"accuracy": True, "macro_f1": True}  # the loss has no declared direction
    assert record["train_tokens_per_second"] == 50.0 and record["eval_tokens_per_second"] == 150.0
    assert record["versions"]["processes"] == 1 and record["device"]


def test_bpc_is_lower_is_better_and_counts_have_no_direction():
    record = build_record(metrics={"bpc": 1.9, "mlm_accuracy": 0.7, "masked_tokens": 84}, device="cpu",
                          train_tokens=0, eval_tokens=32, **fields(train_seconds=0.0))
    assert record["higher_is_better"] == {"bpc": False, "mlm_accuracy": True}
    assert record["train_tokens_per_second"] == 0.0  # nothing trained: no division by zero


def test_missing_and_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"missing keys \['run_dir'\], unknown keys \['masked_tokens'\]"):
        build_record(metrics={}, device="cpu", train_tokens=0, eval_tokens=0,
                     **{k: v for k, v in fields(masked_tokens=3).items() if k != "run_dir"})


def test_read_record_skips_missing_files_and_older_schemas(tmp_path: Path):
    path = tmp_path / "cell" / "metrics.json"
    assert read_record(path) is None
    # A Table 1 cell as the sweep wrote it before it used build_record: its own keys, renamed metrics.
    write_json(path, {"experiment": "table1_smoke", "task": "mlm", "metrics": {"bpc": 2.0, "accuracy": 0.7},
                      "higher_is_better": {"bpc": False, "accuracy": True}, "masked_tokens": 84})
    assert read_record(path) is None
    record = build_record(metrics={"bpc": 2.0}, device="cpu", train_tokens=0, eval_tokens=1, **fields())
    write_json(path, record)
    assert read_record(path) == record == check_record(json.loads(path.read_text()))


def test_report_averages_seeds_and_formats_by_unit(tmp_path: Path):
    for seed, (accuracy, bpc) in enumerate([(60.0, 1.875), (70.0, 1.625)]):
        for task, metrics in (("bbc_longdoc", {"accuracy": accuracy}), ("wiki_mlm", {"bpc": bpc, "loss": 1.0})):
            record = build_record(metrics=metrics, device="cpu", train_tokens=100, eval_tokens=10,
                                  **fields(task=task, seed=seed))
            write_json(tmp_path / f"{task}-s{seed}" / "metrics.json", record)
    table = report(tmp_path)
    assert "| bbc_longdoc | lsg_norm | 4096 | 2 | minilm | 65.0 ± 7.1 |" in table  # percent: one decimal
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.csv").exists()
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].split(",")[:6] == ["task", "model", "max_length", "seeds", "checkpoint", "accuracy"]
    mlm = report(tmp_path / "wiki_mlm-s0")
    assert "| bpc |" in mlm and "| 1.875 |" in mlm and "loss" not in mlm  # bits: three decimals; no loss column


def test_record_keeps_the_run_id_and_the_distinguishing_settings():
    settings = {"attention": "lsg", "block_size": 128, "tune": "all", "do_train": True}
    record = build_record(metrics={"accuracy": 1.0}, device="cpu", train_tokens=0, eval_tokens=1, run_id="abc12345",
                          settings=settings, **fields())
    assert record["run_id"] == "abc12345" and record["settings"] == settings
    assert build_record(metrics={}, device="cpu", train_tokens=0, eval_tokens=1, **fields())["settings"] == {}


@pytest.mark.parametrize(("settings", "classes"), [({"num_labels": 14, "multi_label": False}, 14),
                                                   ({"num_labels": 10, "multi_label": True}, None), ({}, None)])
def test_the_chance_line_follows_the_task(settings, classes):
    """The plot's chance line is 1 / classes of the run's own single-label task, never a fixed 5 classes."""
    from tasks.report import summarize

    record = build_record(metrics={"accuracy": 50.0}, device="cpu", train_tokens=1, eval_tokens=1,
                          settings=settings, **fields())
    assert summarize([record])[0]["_classes"] == classes


def test_the_table_has_every_runs_columns_whatever_comes_first(tmp_path: Path):
    """A classification run read before an MLM run must not hide the MLM run's bpc column (nor the reverse)."""
    for task, metrics in (("bbc_longdoc", {"accuracy": 60.0}), ("wiki_mlm", {"bpc": 1.5})):
        record = build_record(metrics=metrics, device="cpu", train_tokens=1, eval_tokens=1, **fields(task=task))
        write_json(tmp_path / task / "metrics.json", record)
    table = report(tmp_path)
    header = table.splitlines()[0]
    assert "| accuracy |" in header and "| bpc |" in header
    assert "| wiki_mlm | lsg_norm | 4096 | 1 | minilm | — | 1.500 |" in table
    csv_header = (tmp_path / "results.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert "accuracy" in csv_header and "bpc" in csv_header


def test_git_revision_reads_a_linked_worktree(tmp_path: Path):
    """In a worktree .git is a file; HEAD lives in the worktree's git dir and branch refs in the common dir."""
    from tasks.report import git_revision

    common = tmp_path / "repo" / ".git"
    (common / "refs" / "heads").mkdir(parents=True)
    (common / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    (common / "packed-refs").write_text("# pack-refs\n" + "b" * 40 + " refs/heads/feature\n")
    own = common / "worktrees" / "wt"
    own.mkdir(parents=True)
    (own / "commondir").write_text("../..\n")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {own}\n")
    (own / "HEAD").write_text("ref: refs/heads/main\n")
    assert git_revision(worktree) == "a" * 40
    (own / "HEAD").write_text("ref: refs/heads/feature\n")
    assert git_revision(worktree) == "b" * 40
    (own / "HEAD").write_text("c" * 40 + "\n")  # detached
    assert git_revision(worktree) == "c" * 40
    assert git_revision(tmp_path / "nowhere") is None
