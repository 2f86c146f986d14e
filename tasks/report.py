"""The results-file schema (`metrics.json`), the one builder of its records, and a small aggregator of run tables.

`python -m tasks.report runs/longdoc_demo` (the second half of `make run`) reads every
`runs/longdoc_demo/*/metrics.json`, groups runs by model (mean ± std over seeds), prints a Markdown
table, and writes `results.md`, `results.csv` and `results.png` next to the runs. It never recomputes
a metric: it only reads the files.

metrics.json, one flat record per run (keys in `RECORD_KEYS`):
    experiment, task, model, attention, checkpoint, max_length (input tokens), seed, split,
    metrics (the paper's units, declared with their direction in `tasks.metrics.METRICS`),
    higher_is_better, n_samples, train_seconds, eval_seconds, wall_seconds, train_tokens_per_second,
    eval_tokens_per_second, trainable_parameters, parameters, git, date, device, versions, run_dir,
    run_id (tasks/run_identity.py), settings (every knob that distinguishes runs beyond the seed: attention
    parameters, tuning mode, do_train, precision; tables never average records whose settings differ).
Every record, of a training run (tasks/train.py) or of a Table 1 cell (tasks/table1.py), is made by
`build_record`, which checks it against this schema.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import platform
import statistics
from pathlib import Path
from typing import Any

from tasks.metrics import METRICS, higher_is_better

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
RECORD_KEYS = (
    "experiment", "task", "model", "attention", "checkpoint", "max_length", "seed", "split", "metrics",
    "higher_is_better", "n_samples", "train_seconds", "eval_seconds", "wall_seconds", "train_tokens_per_second",
    "eval_tokens_per_second", "trainable_parameters", "parameters", "git", "date", "device", "versions", "run_dir",
    "run_id", "settings",
)


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record with exactly RECORD_KEYS; raises naming missing or unknown keys."""
    missing = [k for k in RECORD_KEYS if k not in record]
    extra = [k for k in record if k not in RECORD_KEYS]
    if missing or extra:
        raise ValueError(f"metrics.json record: missing keys {missing}, unknown keys {extra}")
    return {k: record[k] for k in RECORD_KEYS}


def git_revision(repo: Path = REPO) -> str | None:
    """The checked-out commit, read from .git without running git (None outside a checkout).

    In a linked worktree `.git` is a file naming the worktree's own git directory, which holds HEAD; branch refs
    live in the main repository's directory (named by its `commondir` file).
    """
    git = repo / ".git"
    if git.is_file():
        git = (repo / git.read_text().strip().removeprefix("gitdir: ")).resolve()
    head = git / "HEAD"
    if not head.exists():
        return None
    ref = head.read_text().strip()
    if not ref.startswith("ref: "):
        return ref
    common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").exists() else git
    for directory in dict.fromkeys((git, common)):
        loose = directory / ref[5:]
        if loose.exists():
            return loose.read_text().strip()
    packed = common / "packed-refs"
    for line in packed.read_text().splitlines() if packed.exists() else []:
        if line.endswith(" " + ref[5:]):
            return line.split()[0]
    return None


def build_record(*, metrics: dict[str, float], device: str, train_tokens: float, eval_tokens: float,
                 processes: int = 1, run_id: str | None = None, settings: dict[str, Any] | None = None,
                 **fields: Any) -> dict[str, Any]:
    """The metrics.json record of a run: its own fields plus what every record derives the same way.

    Training runs (tasks/train.py) and Table 1's cells (tasks/table1.py) both build their records here, so
    both carry the same keys, the directions declared in `tasks.metrics.METRICS`, and the same provenance.

    Args:
        metrics: scores in the paper's units, by their registered names (plus counts such as masked_tokens).
        device: "cuda" or "cpu"; recorded as the GPU's or the processor's name.
        train_tokens: tokens read by training, over all epochs (0 when nothing was trained).
        eval_tokens: tokens read by the evaluation.
        processes: processes that ran the job (Accelerate).
        run_id: the run's identity hash (training runs); None for Table 1's cells.
        settings: the knobs that distinguish this run from others of the same model and task ({} if none).
        **fields: the other RECORD_KEYS: experiment, task, model, attention, checkpoint, max_length, seed, split,
            n_samples, train_seconds, eval_seconds, wall_seconds, trainable_parameters, parameters, run_dir.

    Returns:
        The record, keys in RECORD_KEYS order. Raises ValueError naming missing or unknown keys.
    """
    import torch  # here, not at the top: the aggregator below only reads files and should start fast
    import transformers

    train_seconds, eval_seconds = fields.get("train_seconds", 0.0), fields.get("eval_seconds", 0.0)
    return check_record({
        **fields, "metrics": metrics, "higher_is_better": higher_is_better(metrics), "run_id": run_id,
        "settings": settings or {},
        "train_tokens_per_second": train_tokens / train_seconds if train_seconds else 0.0,
        "eval_tokens_per_second": eval_tokens / eval_seconds if eval_seconds else 0.0,
        "git": git_revision(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "processes": processes},
    })


def read_record(path: Path) -> dict[str, Any] | None:
    """The record in `path` (a finished run or cell), or None when there is none of the current schema.

    A file written before a schema change (Table 1 cells used their own keys) counts as not done: the caller
    runs that cell again rather than mixing two schemas in one table.
    """
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    try:
        return check_record(record)
    except ValueError as error:
        log.warning("%s is not a current record (%s): running it again", path, error)
        return None


def read_records(root: Path) -> list[dict[str, Any]]:
    """Every metrics.json under `root`, sorted by model then seed (deterministic tables)."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.glob("**/metrics.json"))]
    return sorted(records, key=lambda r: (r["task"], r["model"], r["max_length"], r["seed"]))


def _mean_std(metric: str, values: list[float]) -> str:
    digits = 1 if METRICS.get(metric).unit == "%" else 3  # bits and fractions need more than one decimal
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, model, max_length): metric means ± std over seeds, speed and time means."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["task"], record["model"], record["max_length"]), []).append(record)
    rows = []
    for (task, model, max_length), runs in groups.items():
        # Every registered metric the runs have, by name: accuracy, macro_f1, micro_f1 / bpc, mlm_accuracy /
        # rouge1 ... rougeLsum; counts (masked_tokens, generated_tokens) and the loss are not table columns.
        metrics = [m for m in METRICS.names() if all(m in r["metrics"] for r in runs)]
        row = {"task": task, "model": model, "max_length": max_length, "seeds": len(runs),
               "checkpoint": Path(runs[0]["checkpoint"]).name}
        row.update({m: _mean_std(m, [r["metrics"][m] for r in runs]) for m in metrics})
        row["_means"] = {m: statistics.mean(r["metrics"][m] for r in runs) for m in metrics}
        settings = runs[0].get("settings") or {}
        single = settings.get("num_labels") and not settings.get("multi_label")
        row["_classes"] = settings["num_labels"] if single else None  # chance = 1 / classes (single-label only)
        row["train tokens/s"] = f"{statistics.mean(r['train_tokens_per_second'] for r in runs):.0f}"
        row["eval tokens/s"] = f"{statistics.mean(r['eval_tokens_per_second'] for r in runs):.0f}"
        row["wall time (s)"] = f"{statistics.mean(r['wall_seconds'] for r in runs):.0f}"
        rows.append(row)
    return rows


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """Every public column of `rows` (runs of different kinds have different metrics): the metrics stay together
    after the identity columns, then speed and time, each group in first-seen order."""
    seen = [c for c in dict.fromkeys(c for row in rows for c in row) if not c.startswith("_")]
    metrics = set(METRICS.names())
    first_metric = next((i for i, c in enumerate(seen) if c in metrics), len(seen))
    others = [c for c in seen if c not in metrics]
    return others[:first_metric] + [c for c in seen if c in metrics] + others[first_metric:]


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = columns_of(rows)
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
    classes = rows[0]["_classes"]
    if classes and all(r["_classes"] == classes for r in rows):  # multi-label or unknown: no chance line
        axis.axhline(100 / classes, color="grey", linestyle=":", label=f"chance ({classes} classes)")
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
    columns = columns_of(rows)
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="—")
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
