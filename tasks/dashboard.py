"""The W&B comparison dashboard of a table: `python -m tasks.dashboard table2 [--scale paper]`.

A W&B Report with, per dataset, ours for every row (LSG rows, Longformer, BigBird, truncation) beside the
paper's value (`paper/<metric>` in each run's summary, tasks/train.py), mean ± std over seeds. Runs are
selected by the table's W&B group and the `task:<dataset>` tag. With WANDB_API_KEY set the report is saved
to the logger's project and its URL printed; offline its spec (the payload `save()` would send) is written
to `runs/<table>/dashboard.json`, to publish later with a key.

Built with `wandb-workspaces` (pinned: `report_spec` wraps its model serialisation, which is private API).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from tasks.tables import datasets, paper_table

# Panels per dataset: micro-F1 everywhere, macro-F1 where the paper prints it (not IMDb).
PANEL_METRICS = ("micro_f1", "macro_f1")


def build_report(table: str, scale: str, entity: str = "", project: str = "") -> Any:
    """The wandb_workspaces Report of `table`: one heading and panel grid per dataset.

    `entity`/`project` empty keeps everything offline (the runsets then hold no project id).
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    spec = paper_table(table)
    blocks: list[Any] = [wr.P(f"{table} at {scale} scale: ours (bars, mean ± std over seeds) beside the paper's "
                              "value (paper/<metric>), grouped by model.")]
    for dataset in datasets(spec, scale):
        label = spec["datasets"].get(dataset, {}).get("label", dataset)
        printed = {m for row in spec["rows"] for m, v in zip(PANEL_METRICS, row["values"].get(dataset, [None, None]),
                                                               strict=True) if v is not None}
        metrics = [m for m in PANEL_METRICS if m in printed or (scale != "paper" and m == "micro_f1")]
        panels = [wr.BarPlot(title=f"{label}: {metric}", metrics=[f"test/{metric}", f"paper/{metric}"],
                             groupby="model.name", orientation="v", groupby_aggfunc="mean",
                             groupby_rangefunc="stddev") for metric in metrics]
        runset = wr.Runset(entity=entity, project=project, name=f"{table} {label}",
                           filters=expr.And(expr.Metric("Group") == spec["scales"][scale].get("group", table),
                                            expr.Tags().isin([f"task:{dataset}"])))
        blocks += [wr.H2(label), wr.PanelGrid(runsets=[runset], panels=panels)]
    return wr.Report(entity=entity, project=project, title=f"LSG {table}: ours vs the paper", blocks=blocks)


def report_spec(report: Any) -> dict[str, Any]:
    """The report as the JSON payload W&B stores (one place for wandb-workspaces' private serialisation)."""
    return report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def main(argv: list[str] | None = None) -> Path | str:
    parser = argparse.ArgumentParser(prog="python -m tasks.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="table2")
    parser.add_argument("--scale", choices=("paper", "smoke"), default="paper")
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY", ""))
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "lsg"))
    parser.add_argument("--out", type=Path, default=None, help="offline spec (default runs/<table>/dashboard.json)")
    args = parser.parse_args(argv)
    if os.environ.get("WANDB_API_KEY"):
        report = build_report(args.table, args.scale, args.entity, args.project)
        report.save()
        print(report.url)
        return report.url
    out = args.out or Path("runs") / args.table / "dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report_spec(build_report(args.table, args.scale)), indent=1), encoding="utf-8")
    print(f"no WANDB_API_KEY: wrote the report's spec to {out}; with a key, rerun this command to publish it")
    return out


if __name__ == "__main__":
    main()
