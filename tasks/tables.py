"""The paper's tables as one command each: `python -m tasks.tables table2 [--scale paper|smoke] [--dry-run]`.

`make table2` runs this. The run list comes from the project's copy of the table (`tasks/paper/table2.yaml`):
at paper scale one run per cell the paper fills in (60 for Table 2), at smoke scale every row on the offline
stand-in task. Each run is composed from conf/ with Hydra's compose API (same configs as `run.py`, so its run
directory is the one `python run.py ...` would use) and trained in this process, one after the other; finished
runs are skipped. The report in the paper's layout (tasks/paper_table.py) is written at the end, with missing
runs marked. On a cluster, print the runs with --dry-run and submit them as `run.py` jobs (docs/tables.md).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)
PAPER_DIR = Path(__file__).with_name("paper")
CONF = Path(__file__).resolve().parents[1] / "conf"
SCALES = ("paper", "smoke")
LAYERS, WIDTH = 12, 768  # base encoders (RoBERTa, Legal-BERT, Longformer, BigBird)
# Keys each query attends to (K), for the FLOP estimate: LSG K = G + 2*sbs + 3*bs (docs/lsg-spec), Longformer
# window 512 + 1 global, BigBird 8 blocks of 64; the 512-token rows attend to every token (<= 512).
KEYS_PER_QUERY = {"lsg": {128: 1 + 2 * 128 + 3 * 128, 256: 1 + 2 * 0 + 3 * 256}, "longformer": 513 + 1,
                  "bigbird": 8 * 64}


@dataclass(frozen=True)
class PlannedRun:
    """One run of a table: the paper's row, the conf/ model and task, and the extra overrides."""

    row: str
    model: str
    task: str
    seed: int
    overrides: tuple[str, ...] = field(default=())

    def hydra_overrides(self, experiment: str) -> list[str]:
        return [f"experiment={experiment}", f"model={self.model}", f"task={self.task}",
                f"trainer.seed={self.seed}", *self.overrides]


def paper_table(table: str) -> dict[str, Any]:
    """The project's copy of `table` (tasks/paper/<table>.yaml)."""
    path = PAPER_DIR / f"{table}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PAPER_DIR.glob("table*.yaml"))
        raise ValueError(f"table={table!r} has no tasks/paper/{table}.yaml; known: {known}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def paper_values(table: str, model: str, task: str) -> dict[str, float]:
    """The paper's numbers for the run of `model` on `task` in `table` ({"micro_f1": 68.8, ...}); {} when the
    table has no project copy or the paper prints no number for that cell (W&B summaries: `paper/<metric>`)."""
    path = PAPER_DIR / f"{table}.yaml"
    if not path.exists():
        return {}
    for row in paper_table(table)["rows"]:
        if row["model"]["paper"] == model and task in row["values"]:
            return {m: v for m, v in zip(("micro_f1", "macro_f1"), row["values"][task], strict=True) if v is not None}
    return {}


def datasets(spec: dict[str, Any], scale: str) -> list[str]:
    """The table's columns at `scale`: the paper's datasets, or the offline stand-in task(s)."""
    return spec["scales"][scale].get("datasets") or list(spec["datasets"])


def planned_runs(table: str, scale: str, seeds: tuple[int, ...] = (0,)) -> list[PlannedRun]:
    """Every run of `table` at `scale`, in the paper's row order then dataset order.

    Paper scale: one run per (row, dataset) cell the paper prints a number in, per seed. Smoke scale: every
    row on every stand-in dataset.
    """
    spec = paper_table(table)
    runs = []
    for row in spec["rows"]:
        for dataset in datasets(spec, scale):
            if scale == "paper" and row["values"][dataset][0] is None:
                continue
            runs += [PlannedRun(row["label"], row["model"][scale], dataset, seed,
                                tuple(row.get("overrides", {}).get(scale, ()))) for seed in seeds]
    return runs


def compose_run(run: PlannedRun, experiment: str, extra: list[str] = ()) -> Any:
    """The validated `RunConfig` of `run` (conf/ composed as `python run.py` would)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tasks.config import to_run_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_run_config(compose(config_name="config", overrides=run.hydra_overrides(experiment) + list(extra)))


def training_flops(cfg: Any, spec: dict[str, Any]) -> float:
    """FLOPs of one run from the model's shape and the dataset statistics (an estimate, not a measurement).

    Per token: 6 N (N = 85M non-embedding parameters of a 12 x 768 encoder) plus 12 * layers * K * d for the
    attention (forward QK^T and AV = 4 K d per layer, x3 with the backward), for every training epoch; the
    test pass costs a third of a training pass.
    """
    stats = spec["statistics"][cfg.task.name]
    long = cfg.model.max_length > 512
    tokens = stats["tokens"][4096 if long else 512]
    if cfg.model.attention == "lsg":
        keys = KEYS_PER_QUERY["lsg"][cfg.model.lsg.block_size]
    else:
        keys = KEYS_PER_QUERY.get(cfg.model.name.split("_")[0], min(tokens, 512)) if long else min(tokens, 512)
    per_token = 6 * LAYERS * 12 * WIDTH ** 2 + 12 * LAYERS * keys * WIDTH
    return per_token * tokens * (stats["n_train"] * cfg.task.epochs + stats["n_test"] / 3)


def dry_run(table: str, scale: str, seeds: tuple[int, ...], tflops: float, extra: list[str] = ()) -> list[str]:
    """One line per run (`run <n>: model=... task=... <overrides>  <run dir>`), then the total and estimate;
    `extra` are the overrides given for every run (they change the run dirs)."""
    spec = paper_table(table)
    experiment = spec["scales"][scale]["experiment"]
    runs = planned_runs(table, scale, seeds)
    lines, flops = [], 0.0
    for n, run in enumerate(runs, 1):
        cfg = compose_run(run, experiment, extra)
        given = " ".join([f"trainer.seed={run.seed}", *run.overrides, *extra])
        lines.append(f"run {n}: model={run.model} task={run.task} {given}  {cfg.run_dir}")
        if scale == "paper":
            flops += training_flops(cfg, spec)
    pairs = len({(run.model, run.task) for run in runs})
    lines.append(f"{len(runs)} runs ({pairs} distinct model x task pairs, {len(seeds)} seed(s)); "
                 f"experiment={experiment}, scale={scale}.")
    if scale == "paper":
        lines.append(
            f"Estimate: {flops:.2e} FLOPs ~ {flops / (tflops * 1e12) / 3600:.1f} GPU-hours at {tflops:g} TFLOP/s "
            "sustained (from FLOP counts, not a measurement: 6*N + 12*layers*K*d per training token, a third of "
            "that per test token, token counts from tasks/paper/table2.yaml's estimated dataset statistics; "
            "HF Longformer/BigBird run ~1.4-1.9x slower than their FLOPs suggest; --tflops changes the "
            "assumed throughput).")
    return lines


def run_table(table: str, scale: str, seeds: tuple[int, ...], extra: list[str], force: bool = False) -> Path:
    """Train every planned run (finished ones are skipped), then write the report; returns the report dir."""
    from tasks import paper_table as report
    from tasks.train import run as train

    spec = paper_table(table)
    experiment = spec["scales"][scale]["experiment"]
    planned = planned_runs(table, scale, seeds)
    root = None
    for n, run in enumerate(planned, 1):
        cfg = compose_run(run, experiment, extra)
        root = Path(cfg.run_dir).parent
        log.info("run %d/%d: %s on %s -> %s", n, len(planned), run.model, run.task, cfg.run_dir)
        try:
            train(cfg, force=force)
        except Exception:  # one failed run (e.g. a checkpoint missing offline) leaves its cell marked missing
            log.exception("run %d (%s on %s) failed; its cell is marked missing", n, run.model, run.task)
    assert root is not None
    report.write(table, scale, root, planned)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="table2")
    parser.add_argument("--scale", choices=SCALES, default="paper")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and the GPU-hours estimate")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (the paper gives one number per cell)")
    parser.add_argument("--tflops", type=float, default=100.0, help="sustained throughput assumed by the estimate")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. trainer.max_steps=1)")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    seeds = tuple(int(s) for s in args.seeds.split(","))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dry_run:
        print("\n".join(dry_run(args.table, args.scale, seeds, args.tflops, args.overrides)))
        return
    root = run_table(args.table, args.scale, seeds, args.overrides, args.force)
    print((root / "table.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
