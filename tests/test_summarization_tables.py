"""`make table4` ... `make table7` (tasks/tables.py, tasks/paper_table.py): the chained runs, the scales, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tasks import paper_table, tables
from tasks.report import build_record

SUMMARIZATION = ("table4", "table5", "table6", "table7")


@pytest.fixture(scope="module")
def paper_runs():
    """table -> [(planned run, composed config)] at paper scale, seeds 0 and 1."""
    out = {}
    for table in SUMMARIZATION:
        spec = tables.paper_table(table)
        runs = tables.planned_runs(table, "paper", (0, 1))
        out[table] = [(run, tables.compose_run(run, spec["scales"]["paper"]["experiment"])) for run in runs]
    return out


def test_each_table_runs_the_four_rows_the_authors_ran_as_a_chain(paper_runs):
    """16 runs per seed over Tables 4-7, distinct dirs; every 16K run starts from its task and seed's 4K final/."""
    seed0 = [(run, cfg) for table in SUMMARIZATION for run, cfg in paper_runs[table] if run.seed == 0]
    assert len(seed0) == 16 and len({cfg.run_dir for _, cfg in seed0}) == 16
    for table in SUMMARIZATION:
        by_run = dict(paper_runs[table])
        for run, cfg in paper_runs[table]:
            if run.after is None:
                assert (run.row, cfg.model.max_length, cfg.trainer.do_train) == ("Ours (4K)", 4096, True)
                continue
            parent = by_run[run.after]
            assert run.after.seed == run.seed and parent.task.name == cfg.task.name
            assert cfg.model.checkpoint == f"{parent.run_dir}/final" and cfg.model.max_length == 16384
    settings = {run.row: (cfg.trainer.do_train, cfg.trainer.tune, cfg.model.lsg.num_global_tokens, cfg.task.epochs)
                for run, cfg in paper_runs["table4"] if run.seed == 0}
    assert settings == {"Ours (4K)": (True, "all", 1, 5.0), "Ours (16K)": (False, "all", 1, 5.0),
                        "+ global tuning": (True, "global_tokens", 64, 1.0), "+ full tuning": (True, "all", 64, 1.0)}


def test_dry_run_lists_the_chain_and_the_estimate(capsys):
    tables.main(["table4", "table5", "table6", "table7", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 16 and sum("(from run 1)" in line for line in runs) == 12
    first = "run 1: [Ours (4K)] model=lsg_bart task=pubmed trainer.seed=0  runs/table4_summarization/pubmed-"
    assert runs[0].startswith(first)
    assert sum(line.startswith("Estimate: ") and "GPU-hours" in line for line in lines) == 4


def test_smoke_tables_share_their_runs_and_published_evaluates_the_authors_checkpoints():
    smoke = {table: [tables.compose_run(run, "table4_smoke").run_dir for run in tables.planned_runs(table, "smoke")]
             for table in SUMMARIZATION}
    assert len({tuple(dirs) for dirs in smoke.values()}) == 1 and len(smoke["table4"]) == 4
    published = {table: tables.planned_runs(table, "published") for table in SUMMARIZATION}
    assert [run.row for run in published["table5"]] == ["Ours (4K)", "Ours (16K)"]  # only a 4K checkpoint
    pubmed = {run.row: tables.compose_run(run, "table4_published") for run in published["table4"]}
    assert set(pubmed) == {"Ours (4K)", "Ours (16K)", "+ full tuning"}
    assert pubmed["Ours (4K)"].model.checkpoint == "ccdv/lsg-bart-base-4096-pubmed"
    assert pubmed["Ours (16K)"].model.checkpoint == "ccdv/lsg-bart-base-4096-pubmed"  # extended, not trained
    assert pubmed["Ours (16K)"].model.max_length == 16384
    assert pubmed["+ full tuning"].model.checkpoint == "ccdv/lsg-bart-base-16384-pubmed"
    assert not any(cfg.trainer.do_train for cfg in pubmed.values())


def _record(cfg, scores: dict[str, float]) -> dict:
    return build_record(experiment=cfg.experiment_name, task=cfg.task.name, model=cfg.model.name, attention="lsg",
                        checkpoint=cfg.model.checkpoint, max_length=cfg.model.max_length, seed=cfg.trainer.seed,
                        split="test", metrics=scores, n_samples=10, train_seconds=0.0, eval_seconds=1.0,
                        wall_seconds=1.0, trainable_parameters=1, parameters=1, run_dir=cfg.run_dir,
                        device="cpu", train_tokens=0, eval_tokens=10, processes=1, run_id=cfg.run_id, settings={})


def test_report_prints_every_row_in_the_papers_layout(tmp_path):
    planned = tables.planned_runs("table4", "paper")
    run_dirs = {}
    for run in planned[:3]:  # "+ full tuning" never ran
        cfg = tables.compose_run(run, "table4_summarization", [f"runs_dir={tmp_path}"])
        run_dirs[run] = cfg.run_dir
        Path(cfg.run_dir).mkdir(parents=True)
        scores = {"rouge1": 47.0, "rouge2": 21.0, "rougeL": 28.0, "rougeLsum": 43.0}
        (Path(cfg.run_dir) / "metrics.json").write_text(json.dumps(_record(cfg, scores)))
    run_dirs[planned[3]] = str(tmp_path / "never-ran")
    paths = paper_table.write("table4", "paper", tmp_path / "table4", planned, run_dirs)
    assert [p.name for p in paths] == ["table.md", "table.tex", "table.csv", "table.png"]
    text = paths[0].read_text()
    assert "RL = ROUGE-Lsum" in text
    assert "| Pegasus (1K) (cited) |  | cited | cited | cited | 45.49 / 19.90 / 27.69 |  |" in text
    assert "| Ours (4K) | 4096 | 47.0 | 21.0 | 43.0 | 47.37 / 21.74 / 43.67 | -0.4 / -0.7 / -0.7 |" in text
    assert "| Ours (16K) | 16384 | 47.0 | 21.0 | 43.0 | 48.03 / 22.42 / 44.32 |" in text
    assert "Missing runs (no metrics.json): + full tuning." in text
    rows = list(csv.DictReader(paths[2].open()))
    (rl,) = [r for r in rows if r["row"] == "+ global tuning" and r["metric"] == "RL"]
    assert (rl["metric_key"], rl["input_length"], rl["status"], rl["cited"]) == ("rougeLsum", "16384", "ok", "False")
    assert float(rl["diff"]) == pytest.approx(43.0 - 44.40)
