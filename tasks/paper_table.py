"""A table in the paper's layout: rows x datasets, ours (mean ± std over seeds) beside the paper's value and
the difference, missing runs marked. Written by `python -m tasks.tables` as `<runs>/<table>/table.md`, `.tex`,
`.csv` and `.png` (per dataset: each row's bar, the paper's value as a black marker).

Cells read `ours micro / macro (paper p / p, Δ d / d)`; a planned run without metrics.json reads `—` and is
listed under the table; a cell the paper leaves empty reads `n/a`; at smoke scale the paper's columns are
other datasets, so its sub-cells read `n/a (smoke)`.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from tasks.report import git_revision, read_records

METRICS = ("micro_f1", "macro_f1")  # Table 2's "Micro/Macro F-1"; single-label micro-F1 = accuracy


def _stats(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _ours(mean_std: tuple[float, float | None] | None) -> str:
    if mean_std is None:
        return "—"
    mean, std = mean_std
    return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def cells(spec: dict[str, Any], scale: str, root: Path, planned: list[Any]) -> list[dict[str, Any]]:
    """One entry per (row, dataset, metric): ours (mean, std, n), the paper's value, the difference, status."""
    from tasks.tables import datasets

    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in read_records(root):
        records.setdefault((record["model"], record["task"]), []).append(record)
    planned_pairs = {(run.model, run.task) for run in planned}
    out = []
    for index, row in enumerate(spec["rows"]):
        model = row["model"][scale]
        for dataset in datasets(spec, scale):
            runs = records.get((model, dataset), [])
            # seeds of one experiment only: runs whose settings differ are not averaged (the last ones win)
            kinds = {json.dumps(r.get("settings") or {}, sort_keys=True) for r in runs}
            if len(kinds) > 1:
                latest = json.dumps(runs[-1].get("settings") or {}, sort_keys=True)
                runs = [r for r in runs if json.dumps(r.get("settings") or {}, sort_keys=True) == latest]
            paper = row["values"].get(dataset, [None, None]) if scale == "paper" else [None, None]
            for metric, reference in zip(METRICS, paper, strict=True):
                values = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
                ours = _stats(values) if values else None
                status = ("ok" if ours else "missing") if (model, dataset) in planned_pairs else "not run"
                out.append({"row": row["label"], "order": index, "kind": row["kind"], "dataset": dataset,
                            "metric": metric, "ours_mean": ours[0] if ours else None,
                            "ours_std": ours[1] if ours else None, "n_seeds": len(values), "paper": reference,
                            "diff": (ours[0] - reference) if ours and reference is not None else None,
                            "status": status})
    return out


def _cell_text(pair: list[dict[str, Any]], scale: str, dataset: str) -> str:
    micro, macro = pair
    if micro["status"] == "not run":
        return "n/a"
    single = dataset == "imdb"  # the paper prints one number for IMDb
    ours = _ours(None if micro["ours_mean"] is None else (micro["ours_mean"], micro["ours_std"]))
    if not single:
        ours += " / " + _ours(None if macro["ours_mean"] is None else (macro["ours_mean"], macro["ours_std"]))
    if scale != "paper":
        return f"{ours} (paper n/a (smoke))"
    paper = "/".join(f"{c['paper']:.1f}" for c in pair if c["paper"] is not None)
    diff = "/".join(f"{c['diff']:+.1f}" for c in pair if c["diff"] is not None)
    return f"{ours} (paper {paper}" + (f", Δ {diff})" if diff else ")")


def markdown(spec: dict[str, Any], scale: str, entries: list[dict[str, Any]], columns: list[str]) -> str:
    labels = [spec["datasets"].get(d, {}).get("label", d) for d in columns]
    lines = [f"Table 2 at {scale} scale (git {git_revision() or '?'}): ours micro / macro F1 (mean ± std over "
             "seeds), the paper's value and the difference.", "",
             "| model | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(columns)]
    missing = []
    for row in spec["rows"]:
        texts = []
        for dataset in columns:
            pair = [e for e in entries if e["row"] == row["label"] and e["dataset"] == dataset]
            texts.append(_cell_text(pair, scale, dataset))
            if pair[0]["status"] == "missing":
                missing.append(f"{row['label']} on {dataset}")
        lines.append(f"| {row['label']} | " + " | ".join(texts) + " |")
    if missing:
        lines += ["", "Missing runs (no metrics.json): " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def latex(spec: dict[str, Any], scale: str, entries: list[dict[str, Any]], columns: list[str]) -> str:
    labels = [spec["datasets"].get(d, {}).get("label", d) for d in columns]
    lines = [r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
             "Model & " + " & ".join(labels) + r" \\", r"\midrule"]
    for row in spec["rows"]:
        texts = [_cell_text([e for e in entries if e["row"] == row["label"] and e["dataset"] == d], scale, d)
                 for d in columns]
        lines.append(row["label"] + " & " + " & ".join(t.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
                                                        for t in texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot(spec: dict[str, Any], entries: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    """Per dataset: micro-F1 bars of every row (colour by attention kind), the paper's values as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"lsg": "tab:blue", "longformer": "tab:orange", "bigbird": "tab:green", "truncated": "tab:gray"}
    fig, axes = plt.subplots(1, len(columns), figsize=(4 + 3 * len(columns), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], columns, strict=True):
        shown = [e for e in entries
                 if e["dataset"] == dataset and e["metric"] == "micro_f1" and e["status"] != "not run"]
        x = range(len(shown))
        ax.bar(x, [e["ours_mean"] or 0 for e in shown], yerr=[e["ours_std"] or 0 for e in shown],
               color=[colours[e["kind"]] for e in shown])
        ax.scatter([i for i, e in zip(x, shown, strict=True) if e["paper"] is not None],
                   [e["paper"] for e in shown if e["paper"] is not None], color="black", marker="_", s=200,
                   label="paper", zorder=3)
        ax.set_xticks(list(x), [e["row"] for e in shown], rotation=60, ha="right", fontsize=7)
        ax.set_title(spec["datasets"].get(dataset, {}).get("label", dataset))
        ax.set_ylabel("micro-F1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(table: str, scale: str, root: Path, planned: list[Any]) -> list[Path]:
    """Write table.md/.tex/.csv/.png of `table` under `root` from its runs' metrics.json; returns the paths."""
    from tasks.tables import datasets, paper_table

    spec = paper_table(table)
    columns = datasets(spec, scale)
    entries = cells(spec, scale, root, planned)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"table.{ext}" for ext in ("md", "tex", "csv", "png")]
    paths[0].write_text(markdown(spec, scale, entries, columns), encoding="utf-8")
    paths[1].write_text(latex(spec, scale, entries, columns), encoding="utf-8")
    with open(paths[2], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["table", "scale", *[k for k in entries[0] if k != "order"]])
        writer.writeheader()
        writer.writerows({"table": table, "scale": scale, **{k: v for k, v in e.items() if k != "order"}}
                         for e in entries)
    plot(spec, entries, columns, paths[3])
    return paths
