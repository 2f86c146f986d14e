"""A table in the paper's layout: ours (mean ± std over seeds) beside the paper's value and the difference, missing
runs marked. Written by `python -m tasks.tables` as `table.md`, `.tex`, `.csv` and `.png`.

Table 2 (rows x datasets): cells read `ours micro / macro (paper p / p, Δ d / d)`; a planned run without
metrics.json reads `—` and is listed under the table; a cell the paper leaves empty reads `n/a`; at smoke scale
the paper's columns are other datasets, so its sub-cells read `n/a (smoke)`. The plot: per dataset, each row's
bar, the paper's value as a black marker.

Tables 4-7 (one dataset, R1 / R2 / RL): every printed row in order; cited rows show the paper's numbers only,
marked cited; our four rows show ours, the input length, the paper's numbers and the difference (no difference
at smoke scale, whose data are not the paper's). RL is the table's convention (`rl` in the paper file: ROUGE-Lsum
or sentence-level ROUGE-L). The plot: ROUGE against input length, the 4K row beside the three 16K rows.
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


def _write_csv(path: Path, table: str, scale: str, entries: list[dict[str, Any]]) -> None:
    """Long format: one line per entry, with the table and the scale."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["table", "scale", *[k for k in entries[0] if k != "order"]])
        writer.writeheader()
        writer.writerows({"table": table, "scale": scale, **{k: v for k, v in e.items() if k != "order"}}
                         for e in entries)


def write(table: str, scale: str, root: Path, planned: list[Any],
          run_dirs: dict[Any, str] | None = None) -> list[Path]:
    """Write table.md/.tex/.csv/.png of `table` under `root` from its runs' metrics.json; returns the paths.

    `run_dirs` (planned run -> its run dir) is where Tables 4-7 read their rows: their four runs share one
    model and task, so only the run directory tells them apart.
    """
    from tasks.tables import datasets, is_chained, paper_table

    spec = paper_table(table)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"table.{ext}" for ext in ("md", "tex", "csv", "png")]
    if is_chained(spec):
        entries = rouge_cells(spec, scale, planned, run_dirs or {})
        paths[0].write_text(rouge_markdown(spec, scale, entries), encoding="utf-8")
        paths[1].write_text(rouge_latex(spec, scale, entries), encoding="utf-8")
        _write_csv(paths[2], table, scale, entries)
        rouge_plot(spec, scale, entries, paths[3])
        return paths
    columns = datasets(spec, scale)
    entries = cells(spec, scale, root, planned)
    paths[0].write_text(markdown(spec, scale, entries, columns), encoding="utf-8")
    paths[1].write_text(latex(spec, scale, entries, columns), encoding="utf-8")
    _write_csv(paths[2], table, scale, entries)
    plot(spec, entries, columns, paths[3])
    return paths


# --- Tables 4-7: ROUGE --------------------------------------------------------------------------------------

ROUGE_LABELS = ("R1", "R2", "RL")


def _rouge_metrics(spec: dict[str, Any]) -> tuple[str, str, str]:
    """The metrics.json keys of R1, R2 and the table's RL convention."""
    return "rouge1", "rouge2", spec["rl"]


def rouge_cells(spec: dict[str, Any], scale: str, planned: list[Any],
                run_dirs: dict[Any, str]) -> list[dict[str, Any]]:
    """One entry per (printed row, R1/R2/RL): ours (mean, std, seeds, input length), the paper's, the difference
    (paper scale and published only), status: cited, ok, missing (planned, no metrics.json) or not run."""
    from tasks.report import read_record

    out = []
    for index, row in enumerate(spec["rows"]):
        mine = [run for run in planned if not row.get("cited") and run.row == row["row"]]
        records = [r for r in (read_record(Path(run_dirs[run]) / "metrics.json") for run in mine if run in run_dirs)
                   if r is not None]
        lengths = sorted({r["max_length"] for r in records})
        for label, metric, reference in zip(ROUGE_LABELS, _rouge_metrics(spec), row["values"], strict=True):
            values = [r["metrics"][metric] for r in records if metric in r["metrics"]]
            ours = _stats(values) if values else None
            status = "cited" if row.get("cited") else ("ok" if ours else "missing") if mine else "not run"
            comparable = ours is not None and scale != "smoke"
            out.append({"row": row["row"], "order": index, "cited": bool(row.get("cited")), "metric": label,
                        "metric_key": metric, "input_length": lengths[0] if lengths else None,
                        "ours_mean": ours[0] if ours else None, "ours_std": ours[1] if ours else None,
                        "n_seeds": len(values), "paper": reference,
                        "diff": ours[0] - reference if comparable else None, "status": status})
    return out


def _rouge_row(entries: list[dict[str, Any]]) -> list[str]:
    """[input, R1, R2, RL, paper R1/R2/RL, Δ] texts of one printed row."""
    first = entries[0]
    paper = " / ".join(f"{e['paper']:.2f}" for e in entries)
    if first["status"] in ("cited", "not run"):
        ours = ["cited" if first["cited"] else "n/a"] * 3
        return ["", *ours, paper, ""]
    ours = [_ours(None if e["ours_mean"] is None else (e["ours_mean"], e["ours_std"])) for e in entries]
    diff = " / ".join(f"{e['diff']:+.1f}" for e in entries) if first["diff"] is not None else ""
    return [str(first["input_length"] or ""), *ours, paper, diff]


def _rows(spec: dict[str, Any], entries: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[str]]]:
    return [(row, _rouge_row([e for e in entries if e["order"] == index]))
            for index, row in enumerate(spec["rows"])]


def _dataset_label(spec: dict[str, Any], scale: str) -> str:
    from tasks.tables import datasets

    paper = next(iter(spec["datasets"].values()))["label"]
    return paper if scale != "smoke" else f"{datasets(spec, scale)[0]} (smoke stand-in for {paper})"


def rouge_markdown(spec: dict[str, Any], scale: str, entries: list[dict[str, Any]]) -> str:
    rl = "ROUGE-Lsum" if spec["rl"] == "rougeLsum" else "sentence-level ROUGE-L"
    comparison = ("the paper's numbers are for its dataset, shown for reference: no difference is taken"
                  if scale == "smoke" else "Δ = ours - paper")
    lines = [f"Table {spec['name'].removeprefix('table')} ({spec['caption']}) at {scale} scale on "
             f"{_dataset_label(spec, scale)} (git {git_revision() or '?'}): R1 / R2 / RL in percent, RL = {rl}; "
             f"{comparison}. Cited rows are other papers' numbers as the authors printed them.", "",
             "| model | input tokens | R1 | R2 | RL | paper R1 / R2 / RL | Δ R1 / R2 / RL |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    missing = []
    for row, texts in _rows(spec, entries):
        lines.append(f"| {row['row']}{' (cited)' if row.get('cited') else ''} | " + " | ".join(texts) + " |")
        if any(e["status"] == "missing" and e["row"] == row["row"] for e in entries):
            missing.append(row["row"])
    if missing:
        lines += ["", "Missing runs (no metrics.json): " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def rouge_latex(spec: dict[str, Any], scale: str, entries: list[dict[str, Any]]) -> str:
    lines = [r"\begin{tabular}{lcccccc}", r"\toprule",
             r"Model & Input & R1 & R2 & RL & Paper R1 / R2 / RL & $\Delta$ \\", r"\midrule"]
    for row, texts in _rows(spec, entries):
        name = row["row"] + (" (cited)" if row.get("cited") else "")
        lines.append(name.replace("+", r"$+$") + " & " + " & ".join(t.replace("±", r"$\pm$") for t in texts)
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def rouge_plot(spec: dict[str, Any], scale: str, entries: list[dict[str, Any]], path: Path) -> None:
    """R1, R2, RL against input length: our rows (the 4K one and the three 16K ones) as filled markers, the
    paper's same rows at the paper's lengths as hollow ones (not at smoke scale: other data, other lengths)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.tables import paper_table

    lengths = {run["row"]: 16384 if run.get("after") else 4096 for run in paper_table(spec["name"])["runs"]}
    markers = dict(zip(lengths, ("o", "s", "^", "D"), strict=False))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, label in zip(axes, ROUGE_LABELS, strict=True):
        for row, marker in markers.items():
            (entry,) = [e for e in entries if e["row"] == row and e["metric"] == label]
            if entry["ours_mean"] is not None:
                ax.errorbar(entry["input_length"], entry["ours_mean"], yerr=entry["ours_std"] or 0, marker=marker,
                            linestyle="none", markersize=8, label=f"{row} (ours)")
            if scale != "smoke":
                ax.plot(lengths[row], entry["paper"], marker=marker, markerfacecolor="none", color="black",
                        linestyle="none", markersize=8, label=f"{row} (paper)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("input tokens")
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{spec['caption']} {scale} scale ({_dataset_label(spec, scale)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
