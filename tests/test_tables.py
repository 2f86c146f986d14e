"""`make table2` (tasks/tables.py, tasks/paper_table.py): the paper's 60 runs, the dry run, the report layout."""

import json

import pytest

from tasks import paper_table, tables


@pytest.fixture(scope="module")
def dry_lines():
    return tables.dry_run("table2", "paper", (0,), 100.0)


def test_paper_scale_is_exactly_the_papers_60_cells(dry_lines):
    spec = tables.paper_table("table2")
    cells = {(row["model"]["paper"], dataset) for row in spec["rows"] for dataset, (micro, _) in row["values"].items()
             if micro is not None}
    runs = [line for line in dry_lines if line.startswith("run ")]
    pairs = {(line.split("model=")[1].split()[0], line.split("task=")[1].split()[0]) for line in runs}
    assert len(runs) == 60 and pairs == cells and len(cells) == 60
    assert len({line.split()[-1] for line in runs}) == 60  # 60 distinct run directories
    assert "longformer" in {model for model, _ in pairs} and "bigbird" in {model for model, _ in pairs}
    assert dry_lines[-2].startswith("60 runs (60 distinct model x task pairs, 1 seed(s))")
    assert "GPU-hours at 100 TFLOP/s" in dry_lines[-1] and "not a measurement" in dry_lines[-1]


def test_seeds_multiply_the_runs_not_the_pairs():
    runs = tables.planned_runs("table2", "paper", (0, 1, 2))
    assert len(runs) == 180 and len({(r.model, r.task) for r in runs}) == 60


def test_smoke_scale_runs_every_row_on_the_offline_task():
    runs = tables.planned_runs("table2", "smoke")
    assert [r.task for r in runs] == ["bbc_longdoc"] * 11
    assert {"longformer_from_roberta", "bigbird_from_roberta", "truncated", "lsg_lsh"} <= {r.model for r in runs}


def test_smoke_legal_rows_share_the_runs_of_their_stand_in():
    # One checkpoint stands in for RoBERTa and Legal-BERT offline, so the Legal rows are the same runs; the
    # dry run says so and the sweep trains 9 runs for the 11 rows.
    lines = tables.dry_run("table2", "smoke", (0,), 100.0)
    assert lines[9].startswith("run 10: model=truncated") and "(the same run as run 1)" in lines[9]
    assert lines[10].startswith("run 11: model=lsg_local") and "(the same run as run 4)" in lines[10]
    assert lines[9].split()[-1] == lines[0].split()[-1]
    assert lines[-1].startswith("11 runs (9 distinct model x task pairs, 9 to train, 1 seed(s))")
    assert "to train" not in tables.dry_run("table2", "paper", (0,), 100.0)[-2]


def test_unknown_table_is_named():
    with pytest.raises(ValueError, match=r"table='table9' has no tasks/paper/table9.yaml"):
        tables.paper_table("table9")


def _record(model, task, seed, micro, macro):
    return {"model": model, "task": task, "max_length": 4096, "seed": seed,
            "metrics": {"micro_f1": micro, "macro_f1": macro, "accuracy": micro}}


def test_report_has_the_papers_layout_with_differences_and_missing_runs(tmp_path, monkeypatch):
    records = [_record("lsg_local", "arxiv", 0, 87.0, 86.0), _record("lsg_local", "arxiv", 1, 88.0, 87.0),
               _record("truncated", "imdb", 0, 95.0, 94.0)]
    for n, record in enumerate(records):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "metrics.json").write_text(json.dumps(record))
    planned = tables.planned_runs("table2", "paper")
    paths = paper_table.write("table2", "paper", tmp_path, planned)
    assert [p.name for p in paths] == ["table.md", "table.tex", "table.csv", "table.png"] and all(
        p.exists() for p in paths)
    text = paths[0].read_text()
    assert "| model | IMDb | Arxiv | Patent | Scotus | ECtHRa | ECtHRb |" in text
    assert "87.5 ± 0.7 / 86.5 ± 0.7 (paper 87.5/87.1, Δ +0.0/-0.6)" in text
    assert "| RoBERTa (512-length) | 95.0 (paper 95.5, Δ -0.5) |" in text  # IMDb: one number
    assert "| Legal-BERT (512-length) | n/a | n/a | n/a | — / — (paper 73.5/60.5) |" in text
    assert "Missing runs (no metrics.json): RoBERTa (512-length) on arxiv;" in text


def test_paper_values_feed_the_wandb_summaries():
    assert tables.paper_values("table2", "lsg_local", "ecthr_a") == {"micro_f1": 68.8, "macro_f1": 63.7}
    assert tables.paper_values("table2", "truncated", "imdb") == {"micro_f1": 95.5}  # IMDb: one number
    assert tables.paper_values("table2", "legal_bert", "imdb") == {}  # printed "-"
    assert tables.paper_values("longdoc_demo", "lsg_norm", "bbc_longdoc") == {}  # no paper table


def test_overrides_after_the_options_reach_every_run(capsys):
    tables.main(["table2", "--scale", "smoke", "--dry-run", "trainer.max_steps=1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run 1: model=truncated task=bbc_longdoc trainer.seed=0 trainer.max_steps=1  ")
    assert lines[0].split()[-1] != tables.dry_run("table2", "smoke", (0,), 100.0)[0].split()[-1]  # its own dir


def test_sweep_trains_a_shared_run_once_and_reports_it_for_both_rows(tmp_path, monkeypatch):
    from tasks import paper_table as report
    from tasks import train

    trained, written = [], {}
    monkeypatch.setattr(train, "run", lambda cfg, force=False: trained.append(cfg.run_dir))
    monkeypatch.setattr(report, "write", lambda table, scale, root, planned, run_dirs: written.update(run_dirs))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "table2_smoke").mkdir(parents=True)
    (tmp_path / "runs" / "table2_smoke" / "table.md").write_text("")
    tables.run_table("table2", "smoke", (0,), [])
    assert len(trained) == 9 == len(set(trained))
    legal = {run.row: written[run] for run in written if "Legal" in run.row}
    assert legal["Legal-BERT (512-length)"] == written[next(r for r in written if r.row == "RoBERTa (512-length)")]
    assert len(written) == 11
