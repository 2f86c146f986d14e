"""The results-file schema (`metrics.json`) and a small aggregator that prints/writes run tables.

`python -m tasks.report runs/longdoc_demo` (the second half of `make run`) reads every
`runs/longdoc_demo/*/metrics.json`, groups runs by model (mean ± std over seeds), prints a Markdown
table, and writes `results.md`, `results.csv` and `results.png` next to the runs. It never recomputes
a metric: it only reads the files.

metrics.json, one flat record per run (keys in `RECORD_KEYS`):
    experiment, task, model, attention, checkpoint, max_length (input tokens), seed, split,
    metrics (the paper's units: F1/accuracy/ROUGE in percent, BPC in bits per masked token),
    higher_is_better, n_samples, train_seconds, eval_seconds, wall_seconds, train_tokens_per_second,
    eval_tokens_per_second, trainable_parameters, parameters, git, date, device, versions, run_dir.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

RECORD_KEYS = (
    "experiment", "task", "model", "attention", "checkpoint", "max_length", "seed", "split", "metrics",
    "higher_is_better", "n_samples", "train_seconds", "eval_seconds", "wall_seconds", "train_tokens_per_second",
    "eval_tokens_per_second", "trainable_parameters", "parameters", "git", "date", "device", "versions", "run_dir",
)
TABLE_METRICS = ("accuracy", "macro_f1", "micro_f1", "bpc", "rouge1", "rouge2", "rougeL", "rougeLsum")


def write_json_atomic(data: Any, path: Path) -> None:
    """Write JSON so that a reader (or a sweep re-run) never sees half a file: temp file + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record with exactly RECORD_KEYS; raises naming missing or unknown keys."""
    missing = [k for k in RECORD_KEYS if k not in record]
    extra = [k for k in record if k not in RECORD_KEYS]
    if missing or extra:
        raise ValueError(f"metrics.json record: missing keys {missing}, unknown keys {extra}")
    return {k: record[k] for k in RECORD_KEYS}


def read_records(root: Path) -> list[dict[str, Any]]:
    """Every metrics.json under `root`, sorted by model then seed (deterministic tables)."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.glob("**/metrics.json"))]
    return sorted(records, key=lambda r: (r["task"], r["model"], r["max_length"], r["seed"]))


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, model, max_length): metric means ± std over seeds, speed and time means."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["task"], record["model"], record["max_length"]), []).append(record)
    rows = []
    for (task, model, max_length), runs in groups.items():
        metrics = [m for m in TABLE_METRICS if all(m in r["metrics"] for r in runs)]
        row = {"task": task, "model": model, "max_length": max_length, "seeds": len(runs),
               "checkpoint": Path(runs[0]["checkpoint"]).name}
        row.update({m: _mean_std([r["metrics"][m] for r in runs]) for m in metrics})
        row["_means"] = {m: statistics.mean(r["metrics"][m] for r in runs) for m in metrics}
        row["train tokens/s"] = f"{statistics.mean(r['train_tokens_per_second'] for r in runs):.0f}"
        row["eval tokens/s"] = f"{statistics.mean(r['eval_tokens_per_second'] for r in runs):.0f}"
        row["wall time (s)"] = f"{statistics.mean(r['wall_seconds'] for r in runs):.0f}"
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = [c for c in rows[0] if not c.startswith("_")] if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "—")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of the classification metrics per model (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("accuracy", "macro_f1") if all(m in r["_means"] for r in rows)]
    if not metrics:
        return
    figure, axis = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        axis.bar([i + k * width for i in range(len(rows))], [r["_means"][metric] for r in rows], width, label=metric)
    axis.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(rows))])
    axis.set_xticklabels([f"{r['model']}\n{r['max_length']} tokens" for r in rows])
    axis.axhline(100 / 5, color="grey", linestyle=":", label="chance (5 classes)")
    axis.set_ylabel("% (test)")
    axis.set_ylim(0, 100)
    axis.legend(loc="upper left", fontsize=8)
    axis.set_title(f"{rows[0]['task']}: long input vs truncation")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(root: Path) -> str:
    """Print-ready table of the runs under `root`; also writes results.{md,csv,png} there."""
    records = read_records(root)
    if not records:
        raise FileNotFoundError(f"no metrics.json under {root}; run the experiment first")
    rows = summarize(records)
    table = markdown(rows)
    (root / "results.md").write_text(table + "\n", encoding="utf-8")
    columns = [c for c in rows[0] if not c.startswith("_")]
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, root / "results.png")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a runs/<experiment> directory")
    args = parser.parse_args()
    print(report(args.root))
    print(f"\nwritten: {args.root / 'results.md'}, results.csv, results.png")


if __name__ == "__main__":
    main()
