"""The paper's tables as one command each: `python -m tasks.tables table2 [--scale paper|smoke] [--dry-run]`.

`make table2` (and `make table4` ... `make table7`) runs this. The run list comes from the project's copy of the
table (`tasks/paper/table2.yaml`; Tables 4-7 share `tasks/paper/summarization.yaml`): for Table 2 one run per
cell the paper fills in (60), at smoke scale every row on the offline stand-in task; for Tables 4-7 the four rows
the authors ran, as a chain: the 4K run, then the three 16K runs that start from its `final/` (resolved from the
run naming of the same task and seed, so no path is copied by hand). Each run is composed from conf/ with
Hydra's compose API (same configs as `run.py`, so its run directory is the one `python run.py ...` would use)
and trained in this process, one after the other (a chain's parent first); finished runs are skipped. The report
in the paper's layout (tasks/paper_table.py) is written at the end, with missing runs marked. On a cluster,
print the runs with --dry-run and submit them as `run.py` jobs (docs/tables.md).
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)
PAPER_DIR = Path(__file__).with_name("paper")
CONF = Path(__file__).resolve().parents[1] / "conf"
SCALES = ("paper", "smoke", "published")  # published: the authors' checkpoints evaluated (Tables 4-7)
LAYERS, WIDTH = 12, 768  # base encoders (RoBERTa, Legal-BERT, Longformer, BigBird)
# Keys each query attends to (K), for the FLOP estimate: LSG's from its settings (LSGSettings.keys_per_query,
# G + 2*sbs + 3*bs), Longformer window 512 + 1 global, BigBird 8 blocks of 64; the 512-token rows attend to every
# token (<= 512).
KEYS_PER_QUERY = {"longformer": 513 + 1, "bigbird": 8 * 64}


@dataclass(frozen=True)
class PlannedRun:
    """One run of a table: the paper's row, the conf/ model and task, the extra overrides, and the run whose
    trained model it starts from (`after`: Tables 4-7's 16K rows start from the 4K run of their task and seed)."""

    row: str
    model: str | None
    task: str
    seed: int
    overrides: tuple[str, ...] = field(default=())
    after: PlannedRun | None = None

    def hydra_overrides(self, experiment: str) -> list[str]:
        model = [f"model={self.model}"] if self.model else []  # None: the experiment's model
        return [f"experiment={experiment}", *model, f"task={self.task}", f"trainer.seed={self.seed}",
                *self.overrides]


def _spec_files() -> dict[str, Path]:
    """Table name -> the tasks/paper file holding it (a file of its own, or one with a `tables:` section)."""
    files = {}
    for path in sorted(PAPER_DIR.glob("*.yaml")):
        if path.stem.startswith("table"):
            files[path.stem] = path
        else:
            for table in yaml.safe_load(path.read_text(encoding="utf-8")).get("tables", {}):
                files[table] = path
    return files


def paper_table(table: str) -> dict[str, Any]:
    """The project's copy of `table`: tasks/paper/<table>.yaml, or the shared file's common keys plus the
    table's own section (Tables 4-7: tasks/paper/summarization.yaml, `tables: {table4: ...}`)."""
    files = _spec_files()
    if table not in files:
        raise ValueError(f"table={table!r} has no tasks/paper/{table}.yaml; known: {sorted(files)}")
    spec = yaml.safe_load(files[table].read_text(encoding="utf-8"))
    if "tables" not in spec:
        return spec
    return {**{k: v for k, v in spec.items() if k != "tables"}, **spec["tables"][table], "name": table}


def is_chained(spec: dict[str, Any]) -> bool:
    """Tables 4-7: a chain of runs per task and seed, and ROUGE cells (not Table 2's row x dataset grid)."""
    return spec.get("kind") == "summarization"


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
    if is_chained(spec):
        return chained_runs(spec, scale, seeds)
    runs = []
    for row in spec["rows"]:
        for dataset in datasets(spec, scale):
            if scale == "paper" and row["values"][dataset][0] is None:
                continue
            runs += [PlannedRun(row["label"], row["model"][scale], dataset, seed,
                                tuple(row.get("overrides", {}).get(scale, ()))) for seed in seeds]
    return runs


def chained_runs(spec: dict[str, Any], scale: str, seeds: tuple[int, ...]) -> list[PlannedRun]:
    """Tables 4-7: per seed, the spec's `runs` in order, each 16K row after the 4K run of its task and seed.

    At scale=published a row runs from its published checkpoint (the table's `checkpoints`), or, if it trains
    nothing (`without_training`: the pure extrapolation), from its parent's; the other rows are not run.
    """
    (dataset,) = datasets(spec, scale)
    runs = []
    for seed in seeds:
        planned: dict[str, PlannedRun] = {}
        for run in spec["runs"]:
            overrides = [*run["overrides"].get("all", []), *run["overrides"].get(scale, [])]
            parent = planned.get(run.get("after"))
            if scale == "published":
                checkpoint = spec.get("checkpoints", {}).get(run["key"])
                if checkpoint:
                    overrides.append(f"model.checkpoint={checkpoint}")
                    parent = None
                elif not (run.get("without_training") and parent):
                    continue
            planned[run["key"]] = PlannedRun(run["row"], None, dataset, seed, tuple(overrides), parent)
        runs += planned.values()
    return runs


def starting_point(cfg: Any) -> str:
    """What a run hands to the runs chained after it: its trained `final/`, or, if it trains nothing, the
    checkpoint it evaluated (a published one)."""
    return f"{cfg.run_dir}/final" if cfg.trainer.do_train else cfg.model.checkpoint


def compose_run(run: PlannedRun, experiment: str, extra: list[str] | tuple[str, ...] = ()) -> Any:
    """The validated `RunConfig` of `run` (conf/ composed as `python run.py` would); a chained run gets
    `model.checkpoint=` its parent's starting point, resolved from the parent's own composed config."""
    return _compose(run, experiment, tuple(extra))


@functools.lru_cache(maxsize=256)  # a chain composes its parent once, not once per child (and per dry-run line)
def _compose(run: PlannedRun, experiment: str, extra: tuple[str, ...]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tasks.config import to_run_config

    chain = [f"model.checkpoint={starting_point(_compose(run.after, experiment, extra))}"] if run.after else []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = run.hydra_overrides(experiment) + chain + list(extra)
        return to_run_config(compose(config_name="config", overrides=overrides))


def summarization_flops(cfg: Any, spec: dict[str, Any]) -> float:
    """FLOPs of one LSG-BART-base run (Tables 4-7) from the dataset statistics (an estimate, not a measurement).

    BART-base: 6 encoder layers (12 d^2 parameters each), 6 decoder layers (16 d^2: self, cross, FFN) plus the
    vocabulary projection (50265 x d) per target token. Training: 6 N per token of the encoder (S source tokens,
    LSG keys K = G + 3 x 256) and of the decoder (T target tokens, cross-attending to S), x epochs when the run
    trains; test: one encoder pass and 5 beams x T decoder steps per document.
    """
    stats = spec["statistics"][cfg.task.name]
    source = stats["tokens"][16384 if cfg.model.max_length > 4096 else 4096]
    target, layers, d = stats["target_tokens"], 6, WIDTH
    keys = min(source, cfg.model.lsg.num_global_tokens + 3 * cfg.model.lsg.block_size)
    encoder = 2 * layers * 12 * d ** 2 * source + 4 * layers * keys * d * source  # one forward pass
    decoder_token = 2 * (layers * 16 * d ** 2 + 50265 * d) + 4 * layers * (source + target) * d
    train = 3 * (encoder + decoder_token * target) * stats["n_train"] * cfg.task.epochs if cfg.trainer.do_train else 0
    test = (encoder + cfg.task.generation.num_beams * target * decoder_token) * stats["n_test"]
    return train + test


def training_flops(cfg: Any, spec: dict[str, Any]) -> float:
    """FLOPs of one run from the model's shape and the dataset statistics (an estimate, not a measurement).

    Per token: 6 N (N = 85M non-embedding parameters of a 12 x 768 encoder) plus 12 * layers * K * d for the
    attention (forward QK^T and AV = 4 K d per layer, x3 with the backward), for every training epoch; the
    test pass costs a third of a training pass.
    """
    if is_chained(spec):
        return summarization_flops(cfg, spec)
    stats = spec["statistics"][cfg.task.name]
    long = cfg.model.max_length > 512
    tokens = stats["tokens"][4096 if long else 512]
    if cfg.model.attention == "lsg":
        keys = cfg.model.lsg_settings().keys_per_query()
    else:
        keys = KEYS_PER_QUERY.get(cfg.model.name.split("_")[0], min(tokens, 512)) if long else min(tokens, 512)
    per_token = 6 * LAYERS * 12 * WIDTH ** 2 + 12 * LAYERS * keys * WIDTH
    return per_token * tokens * (stats["n_train"] * cfg.task.epochs + stats["n_test"] / 3)


def dry_run(table: str, scale: str, seeds: tuple[int, ...], tflops: float, extra: list[str] = ()) -> list[str]:
    """One line per run (`run <n>: model=... task=... <overrides>  <run dir>`, a chained run naming the run it
    starts from), then the total and, at paper scale, the estimate; `extra` are the overrides given for every
    run (they change the run dirs)."""
    spec = paper_table(table)
    experiment = spec["scales"][scale]["experiment"]
    runs = planned_runs(table, scale, seeds)
    lines, flops, numbers, first_of_dir = [], 0.0, {}, {}
    for n, run in enumerate(runs, 1):
        numbers[run] = n
        cfg = compose_run(run, experiment, extra)
        given = " ".join([f"trainer.seed={run.seed}", *run.overrides, *extra])
        if run.after:  # resolved from the parent's run naming: its final/ (or the checkpoint it evaluated)
            given += f" model.checkpoint={cfg.model.checkpoint} (from run {numbers[run.after]})"
        shared = first_of_dir.setdefault(cfg.run_dir, n)
        if shared != n:
            given += f" (the same run as run {shared})"
        label = f"[{run.row}] " if is_chained(spec) else ""
        lines.append(f"run {n}: {label}model={run.model or cfg.model.name} task={run.task} {given}  {cfg.run_dir}")
        if scale == "paper" and shared == n:
            flops += training_flops(cfg, spec)
    pairs = len({(run.model, run.task) for run in runs})
    chained = sum(run.after is not None for run in runs)
    shape = (f"{chained} chained after the run they start from" if is_chained(spec)
             else f"{pairs} distinct model x task pairs")
    if len(first_of_dir) < len(runs):  # rows whose configs coincide at this scale (one stand-in checkpoint)
        shape += f", {len(first_of_dir)} to train"
    lines.append(f"{len(runs)} runs ({shape}, {len(seeds)} seed(s)); experiment={experiment}, scale={scale}.")
    if scale == "paper":
        basis = ("BART-base encoder 6 x 12 d^2 + decoder 6 x 16 d^2 + vocabulary projection, 6 N per training "
                 "token, generation 5 beams" if is_chained(spec)
                 else "6*N + 12*layers*K*d per training token, a third of that per test token; HF "
                      "Longformer/BigBird run ~1.4-1.9x slower than their FLOPs suggest")
        lines.append(
            f"Estimate: {flops:.2e} FLOPs ~ {flops / (tflops * 1e12) / 3600:.1f} GPU-hours at {tflops:g} TFLOP/s "
            f"sustained (from FLOP counts, not a measurement: {basis}; token counts from "
            f"tasks/paper's estimated dataset statistics; --tflops changes the assumed throughput).")
    return lines


def report_dir(table: str, spec: dict[str, Any], root: Path) -> Path:
    """Where a table's report goes: its runs' folder (Table 2), or a subfolder per table when several tables
    share the folder (Tables 4-7)."""
    return root / table if is_chained(spec) else root


def run_table(table: str, scale: str, seeds: tuple[int, ...], extra: list[str], force: bool = False) -> Path:
    """Train every planned run (finished ones are skipped), then write the report; returns the report dir."""
    from tasks import paper_table as report
    from tasks.train import run as train

    spec = paper_table(table)
    experiment = spec["scales"][scale]["experiment"]
    planned = planned_runs(table, scale, seeds)
    run_dirs: dict[PlannedRun, str] = {}
    for n, run in enumerate(planned, 1):
        cfg = compose_run(run, experiment, extra)
        shared = cfg.run_dir in run_dirs.values()  # another row's run at this scale: its metrics fill both cells
        run_dirs[run] = cfg.run_dir
        if shared:
            log.info("run %d/%d: %s is the same run as an earlier row (%s)", n, len(planned), run.row, cfg.run_dir)
            continue
        log.info("run %d/%d: %s on %s -> %s", n, len(planned), run.model or run.row, run.task, cfg.run_dir)
        try:
            train(cfg, force=force)
        except Exception:  # one failed run (e.g. a checkpoint missing offline) leaves its cell marked missing
            log.exception("run %d (%s on %s) failed; its cell is marked missing", n, run.model or run.row, run.task)
    root = report_dir(table, spec, Path(next(iter(run_dirs.values()))).parent)
    report.write(table, scale, root, planned, run_dirs)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="+", metavar="table|override",
                        help="table2, table4 ... table7 (several run one after the other), then any extra Hydra "
                             "overrides for every run (key=value, e.g. trainer.max_steps=1)")
    parser.add_argument("--scale", choices=SCALES, default="paper")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and the GPU-hours estimate")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (the paper gives one number per cell)")
    parser.add_argument("--tflops", type=float, default=100.0, help="sustained throughput assumed by the estimate")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    args.tables = [item for item in args.items if "=" not in item]
    args.overrides = [item for item in args.items if "=" in item]
    if not args.tables:
        parser.error("name at least one table (table2, table4 ... table7)")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for table in args.tables:
        if args.scale not in paper_table(table)["scales"]:
            parser.error(f"--scale {args.scale} is not defined for {table}; its scales: "
                         f"{sorted(paper_table(table)['scales'])}")
    if args.dry_run:
        for table in args.tables:
            if len(args.tables) > 1:
                print(f"# {table}")
            print("\n".join(dry_run(table, args.scale, seeds, args.tflops, args.overrides)))
        return
    for table in args.tables:
        root = run_table(table, args.scale, seeds, args.overrides, args.force)
        print((root / "table.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
