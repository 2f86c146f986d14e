"""`python -m tools.bench` (`make bench`): forward+backward steps of LSG vs full attention, Longformer and BigBird.

A benchmark, not a test: it times training steps (forward, backward, no optimizer) of RoBERTa-base-shaped
encoders with random weights (`tools.bench_systems`), interleaving the systems in each round so that load
from other processes hits them alike, and reports the median after one warm-up step.

* Time: wall clock of a step (CUDA synchronised). Timed repeats per cell are `--repeats`, cut down to
  fit `--cell-seconds` for slow cells (at least one); the JSON records how many ran. A warm-up step longer
  than `--cell-seconds` is itself the single timed step (`warmup_timed` in the JSON).
* Memory: peak bytes of the tensors allocated during the warm-up step, above the model's own weights and
  inputs (activations, temporaries, weight gradients). On CPU it comes from `lsg.memory.PeakMemory`, a
  deterministic live-tensor tracker (what a caching-free allocator would hold; it does not see scratch
  buffers a fused kernel frees before returning); on CUDA from `torch.cuda.max_memory_allocated`.
* Dense floor: the `floor` system is the same encoder with attention replaced by a no-op of the same shapes.
  Every system's step minus the floor's at that length is its attention share (`attention_s`), and the
  attention ratios (`attention_ratios`) compare those: the dense layers, identical in every system and most
  of a step on CPU, no longer dilute the ratios, so they mean the same on any CPU.
* Dropout column: at `--dropout-lengths` (default 4096) every system is measured again with attention
  dropout `--dropout` (default 0.1, what fine-tuning BERT, RoBERTa or BART keeps), in the same interleaved
  rounds. `dropout_step_ratios` gives each system's step with dropout over its step without.
* FLOPs: attention FLOPs are counted analytically (4·D per query-key pair forward, x3.5 for forward +
  backward as FlashAttention-2 counts, recomputation included), dense layers as 3 x 24·T·d² per layer.
  A large matmul measured in the same run gives the machine's peak; the LSG kernel is also timed alone,
  without and with dropout (`kernel` in the JSON), to report the fraction of that peak its attention reaches,
  beside torch's own fused attention on dense inputs and on the LSG kernel's call shape (`kernel.fused`), the
  yardstick of what a fused kernel reaches on this machine.
* Memory goals compare per position: LSG's encoder also runs its global token(s) (1 of 4097 positions).
* Runs that would not fit are skipped with a reason: a memory estimate above 60% of the free memory, or an
  estimated step above `--max-step-seconds`.

Writes runs/bench/<machine>-<date>.json (atomically) and a log-log plot beside it, and prints the ratio
table (system / LSG norm 128/4) and the CPU goals (docs/performance.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm import tqdm

from lsg.atomic import staged_file, write_json
from lsg.fast import chunk_ranges
from lsg.layout import padded_length
from lsg.memory import PeakMemory
from lsg.variants import ATTENTION_VARIANTS
from tools.bench_systems import (
    FLOOR,
    LSG_NORM,
    REFERENCE,
    Shape,
    System,
    all_systems,
    build_system,
    lsg_pairs,
    make_inputs,
)

# The paper's comparison: full attention, Longformer, BigBird, LSG. `--quick` runs these, and so does a default run
# on CPU from 16384 tokens on, where the other systems would take too long.
CORE_SYSTEMS = ("full_sdpa", "longformer_512", "bigbird", "lsg_norm")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12 if cuda else 2, help="encoder layers (12 on GPU, 2 on CPU)")
    parser.add_argument("--batch", type=int, default=4 if cuda else 1)
    parser.add_argument("--lengths", type=int, nargs="+", help="default 1024 4096 16384 (+65536 on GPU)")
    parser.add_argument("--systems", nargs="+", choices=list(all_systems()),
                        help=f"default: all, and on CPU only {', '.join(CORE_SYSTEMS)} from 16384 tokens on")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per cell after the warm-up")
    parser.add_argument("--cell-seconds", type=float, default=30.0,
                        help="fewer repeats (at least 1) for cells whose warm-up step shows they would take longer")
    parser.add_argument("--max-step-seconds", type=float, default=300.0, help="skip cells estimated to be slower")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: lengths 1024 2048, systems {', '.join(CORE_SYSTEMS)}, 1 repeat")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="attention dropout of the dropout column, in [0, 1) (default 0.1; 0: no column)")
    parser.add_argument("--dropout-lengths", type=int, nargs="*",
                        help="lengths at which every system is measured with --dropout too (default: 4096 if run)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="directory of the JSON and plot")
    args = parser.parse_args(argv)
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.quick:
        args.lengths = args.lengths or [1024, 2048]
        args.systems = args.systems or list(CORE_SYSTEMS)
        args.repeats = 1
    args.lengths = args.lengths or ([1024, 4096, 16384] + ([65536] if cuda else []))
    if args.dropout_lengths is None:
        args.dropout_lengths = [4096] if 4096 in args.lengths else []
    if not set(args.dropout_lengths) <= set(args.lengths):
        parser.error(f"--dropout-lengths must be among --lengths {args.lengths}, got {args.dropout_lengths}")
    if not args.dropout:
        args.dropout_lengths = []
    return args


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, threads, versions and GPU name: the JSON's `machine` record."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "hostname": platform.node(),
        # glibc allocator settings change CPU timings at 16K tokens (page faults on fresh buffers): recorded
        "malloc_env": {name: os.environ.get(name) for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a large square matmul on this machine, median of 5."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / _median_seconds(lambda: a @ b, device, 5) / 1e9


def kernel_efficiency(shape: Shape, batch: int, length: int, device: torch.device, dtype: torch.dtype,
                      peak: float, dropout: float) -> dict[str, Any]:
    """Attention alone, forward + backward on (B, H, 1+T, D) inputs: GFLOP/s and fraction of the matmul peak of
    "lsg" and "lsg_blocked", and of "lsg" with attention dropout `dropout` ("lsg_dropout", if not 0)."""
    D, H = shape.head_dim, shape.heads
    q, k, v = (torch.randn(batch, H, 1 + length, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    valid = torch.ones(batch, length, dtype=torch.bool, device=device)
    flop = 3.5 * 4 * D * H * batch * lsg_pairs(LSG_NORM)(length)
    result: dict[str, Any] = {"length": length, "settings": LSG_NORM.to_dict(), "gflop": flop / 1e9}
    runs = [("lsg", "lsg", 0.0), ("lsg_blocked", "lsg_blocked", 0.0)] + ([("lsg_dropout", "lsg", dropout)]
                                                                         if dropout else [])
    for label, name, p in runs:
        variant = ATTENTION_VARIANTS.get(name)

        def step(variant=variant, p=p) -> None:
            variant(q, k, v, valid, LSG_NORM, scaling=D**-0.5, dropout=p, training=True).sum().backward()

        seconds = _median_seconds(step, device, 5)
        result[label] = {"seconds": seconds, "gflops": flop / seconds / 1e9, "fraction_of_peak": flop / seconds / 1e9
                         / peak, "dropout": p}
    if dropout:
        result["lsg_dropout"]["ratio_to_no_dropout"] = result["lsg_dropout"]["seconds"] / result["lsg"]["seconds"]
    result["fused"] = fused_attention_efficiency(shape, batch, length, device, dtype, peak)
    return result


def fused_attention_efficiency(shape: Shape, batch: int, length: int, device: torch.device, dtype: torch.dtype,
                               peak: float) -> dict[str, Any]:
    """torch's fused SDPA alone, forward + backward, as a yardstick for the LSG kernel's fraction of peak:
    dense attention at `length` (at most 4096: it is quadratic), and the shape of the calls the LSG kernel makes
    (the local key set of its first chunk, as `lsg.fast` cuts it: bs queries over 3*bs keys, the blocks as heads;
    2 blocks at the RoBERTa-base defaults)."""
    D, H, bs = shape.head_dim, shape.heads, LSG_NORM.block_size
    dense = 1 + min(length, 4096)
    start, stop = chunk_ranges(padded_length(length, LSG_NORM) // bs, batch * H * LSG_NORM.keys_per_query() * D)[0]
    shapes = {"dense": ((batch, H, dense, D), (batch, H, dense, D)),
              "lsg_call": ((batch * H, stop - start, bs, D), (batch * H, stop - start, 3 * bs, D))}
    result: dict[str, Any] = {}
    for label, (query_shape, key_shape) in shapes.items():
        q = torch.randn(query_shape, device=device, dtype=dtype, requires_grad=True)
        k, v = (torch.randn(key_shape, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
        flop = 3.5 * 4 * D * math.prod(query_shape[:-1]) * key_shape[-2]

        def step(q=q, k=k, v=v) -> None:
            torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

        seconds = _median_seconds(step, device, 5)
        result[label] = {"query": list(query_shape), "key": list(key_shape), "seconds": seconds,
                         "gflops": flop / seconds / 1e9, "fraction_of_peak": flop / seconds / 1e9 / peak}
    return result


def train_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Forward, a scalar loss and backward; gradients are dropped so every step allocates them alike."""
    hidden = model(**inputs).last_hidden_state
    hidden.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)


def measure_memory(model: torch.nn.Module, inputs: dict[str, torch.Tensor], device: torch.device) -> tuple[float, int]:
    """One step (the warm-up): its wall time and the peak bytes allocated during it."""
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train_step(model, inputs)
        torch.cuda.synchronize(device)
        return time.perf_counter() - start, torch.cuda.max_memory_allocated(device) - base
    with PeakMemory() as memory:
        train_step(model, inputs)
    return time.perf_counter() - start, memory.peak_bytes


def available_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1)) * 1024.0
    return float("inf")


def step_gflop(system: System, shape: Shape, batch: int, length: int) -> tuple[float, float]:
    """Analytic (attention, whole step) GFLOP of one forward + backward step."""
    attention = 3.5 * 4 * shape.head_dim * shape.heads * batch * shape.layers * system.pairs(length)
    dense = 3 * 24 * batch * length * shape.hidden**2 * shape.layers
    return attention / 1e9, (attention + dense) / 1e9


def skip_reason(system: System, shape: Shape, batch: int, length: int, device: torch.device, peak: float,
                max_step_seconds: float) -> str | None:
    """Why a cell cannot run here, from the memory and time estimates, or None."""
    needed, free = system.quadratic_bytes(shape, batch, length, device), available_bytes(device)
    if needed > 0.6 * free:
        return f"memory estimate {needed / 2**30:.1f} GiB > 60% of {free / 2**30:.1f} GiB free"
    seconds = step_gflop(system, shape, batch, length)[1] / (0.5 * peak)
    if seconds > max_step_seconds:
        return f"estimated step {seconds:.0f} s > --max-step-seconds {max_step_seconds:.0f}"
    return None


Entry = tuple[System, float]  # a system and its attention dropout


def run_length(length: int, entries: list[Entry], args: argparse.Namespace, shape: Shape, device: torch.device,
               dtype: torch.dtype, peak: float, progress: tqdm) -> list[dict[str, Any]]:
    """All cells of one length: build, warm up (memory), then timed rounds interleaving the systems."""
    cells, live = [], []
    for system, dropout in entries:
        cell: dict[str, Any] = {"system": system.name, "length": length, "dropout": dropout, "status": "ok"}
        cell["attention_gflop"], cell["step_gflop"] = step_gflop(system, shape, args.batch, length)
        cells.append(cell)
        cell_shape = dataclasses.replace(shape, attention_dropout=dropout)
        reason = skip_reason(system, cell_shape, args.batch, length, device, peak, args.max_step_seconds)
        if reason:
            cell.update(status="skipped", reason=reason)
            progress.update(1 + args.repeats)
            continue
        try:
            model, extra = build_system(system, cell_shape, length, device, dtype)
            inputs = make_inputs(model, extra, args.batch, length, device)
            warmup, cell["peak_bytes"] = measure_memory(model, inputs, device)
        except (RuntimeError, MemoryError) as error:  # out of memory or an unsupported shape: record, go on
            cell.update(status="failed", reason=f"{type(error).__name__}: {str(error)[:200]}")
            progress.update(1 + args.repeats)
            continue
        if warmup > args.cell_seconds:
            # A step this long has no warm-up effect worth a second run: its (memory) step is also its time.
            cell.update(repeats=1, times_s=[warmup], median_s=warmup, warmup_timed=True)
            cell["step_gflops"] = cell["step_gflop"] / warmup
            progress.update(1 + args.repeats)
            del model, inputs
            continue
        cell["repeats"] = max(1, min(args.repeats, int(args.cell_seconds // max(warmup, 1e-9))))
        cell["times_s"] = []
        progress.update(1 + args.repeats - cell["repeats"])
        live.append((cell, model, inputs))
    for round_index in range(args.repeats):
        for cell, model, inputs in live:
            if round_index < cell["repeats"]:
                _synchronize(device)
                start = time.perf_counter()
                train_step(model, inputs)
                _synchronize(device)
                cell["times_s"].append(time.perf_counter() - start)
                progress.update(1)
    for cell, _, _ in live:
        cell["median_s"] = statistics.median(cell["times_s"])
        cell["step_gflops"] = cell["step_gflop"] / cell["median_s"]
    return cells


def ratio_table(cells: list[dict[str, Any]], key: str, dropout: float = 0.0) -> dict[str, dict[int, float]]:
    """{system: {length: cell[key] / reference cell[key]}} for the measured cells of one dropout."""
    cells = [c for c in cells if c.get("dropout", 0.0) == dropout]
    reference = {c["length"]: c[key] for c in cells if c["system"] == REFERENCE and c.get(key)}
    table: dict[str, dict[int, float]] = {}
    for cell in cells:
        if cell.get(key) and cell["length"] in reference:
            table.setdefault(cell["system"], {})[cell["length"]] = cell[key] / reference[cell["length"]]
    return table


def add_attention_shares(cells: list[dict[str, Any]]) -> None:
    """`attention_s` of every measured cell: its median step minus the floor's at the same length (the floor has
    no attention, so no dropout either)."""
    floor = {c["length"]: c["median_s"] for c in cells if c["system"] == FLOOR and c["status"] == "ok"}
    for cell in cells:
        if cell["status"] == "ok" and cell["system"] != FLOOR and cell["length"] in floor:
            cell["attention_s"] = cell["median_s"] - floor[cell["length"]]


def column_dropout(cells: list[dict[str, Any]]) -> float | None:
    """The attention dropout of the run's dropout column, or None when it has none."""
    return next((c["dropout"] for c in cells if c["dropout"]), None)


def dropout_step_ratios(cells: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{system: {length: step with dropout / step without}} where both were measured."""
    plain = {(c["system"], c["length"]): c["median_s"] for c in cells if not c["dropout"] and c.get("median_s")}
    table: dict[str, dict[int, float]] = {}
    for cell in cells:
        if cell["dropout"] and cell.get("median_s") and (cell["system"], cell["length"]) in plain:
            table.setdefault(cell["system"], {})[cell["length"]] = \
                cell["median_s"] / plain[(cell["system"], cell["length"])]
    return table


def format_table(cells: list[dict[str, Any]], lengths: list[int], dropout_lengths: list[int] = ()) -> str:
    """Markdown table, a row per system: per length the median step, peak memory and both ratios to LSG norm,
    then the attention share (step minus floor) and its ratio to LSG's; per dropout length the step with
    dropout, its ratio to the same system without, and the attention share's ratio to LSG's with dropout."""
    time_ratio, memory_ratio = ratio_table(cells, "median_s"), ratio_table(cells, "peak_bytes")
    attention_ratio = ratio_table(cells, "attention_s")
    dropout = column_dropout(cells) or 0.0
    own, attention_dropout = dropout_step_ratios(cells), ratio_table(cells, "attention_s", dropout)
    header = ["system"]
    for length in lengths:
        header += [f"{length} tokens: s, MiB (time x, mem x)", f"{length}: attention s (x)"]
    header += [f"{length}, dropout {dropout}: s, MiB (x no dropout; attention x)" for length in dropout_lengths]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def find(system: str, length: int, p: float) -> dict[str, Any] | None:
        return next((c for c in cells if c["system"] == system and c["length"] == length and c["dropout"] == p),
                    None)

    for system in dict.fromkeys(c["system"] for c in cells):
        row = []
        for length in lengths:
            cell = find(system, length, 0.0)
            if cell is None or cell["status"] != "ok":
                row += ["—" if cell is None else cell["status"], ""]
                continue
            ratios = f"{time_ratio.get(system, {}).get(length, float('nan')):.2f}, " \
                     f"{memory_ratio.get(system, {}).get(length, float('nan')):.2f}"
            row.append(f"{cell['median_s']:.2f}, {cell['peak_bytes'] / 2**20:.0f} ({ratios})")
            share = cell.get("attention_s")
            row.append("" if share is None else
                       f"{share:.2f} ({attention_ratio.get(system, {}).get(length, float('nan')):.2f})")
        for length in dropout_lengths:
            cell = find(system, length, dropout)
            if cell is None or cell["status"] != "ok":
                row.append("—" if cell is None else cell["status"])
                continue
            row.append(f"{cell['median_s']:.2f}, {cell['peak_bytes'] / 2**20:.0f} "
                       f"(x{own.get(system, {}).get(length, float('nan')):.2f}; "
                       f"{attention_dropout.get(system, {}).get(length, float('nan')):.2f})")
        lines.append(f"| {system} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def evaluate_goals(cells: list[dict[str, Any]], kernel: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The CPU goals (docs/performance.md) that this run can check: value, target and whether it is met."""
    cell = {(c["system"], c["length"], c["dropout"]): c for c in cells if c["status"] == "ok"}
    dropout = column_dropout(cells)

    def ratio(numerator: str, denominator: str, length: int, key: str = "median_s", other: int | None = None,
              p: float = 0.0, q: float = 0.0):
        a, b = cell.get((numerator, length, p)), cell.get((denominator, other or length, q))
        return None if a is None or b is None or not a.get(key) or not b.get(key) else a[key] / b[key]

    def per_position(value: float | None) -> float | None:
        """LSG's encoder runs its G global tokens on top of the 4096 (their activations in every dense layer, about
        G/4096 of the step's memory): memory goals compare per position."""
        return None if value is None else value * 4096 / (4096 + LSG_NORM.num_global_tokens)

    checks = [
        ("attention longformer_512 / lsg_norm at 4096", ratio("longformer_512", REFERENCE, 4096, "attention_s"),
         ">=", 3.0),
        ("attention bigbird / lsg_norm at 4096", ratio("bigbird", REFERENCE, 4096, "attention_s"), ">=", 2.0),
        ("time full_sdpa / lsg_norm at 4096", ratio("full_sdpa", REFERENCE, 4096), ">=", 1.0),
        ("time full_sdpa / lsg_norm at 16384", ratio("full_sdpa", REFERENCE, 16384), ">=", 3.0),
        ("time lsg_norm 16384 / 4096", ratio(REFERENCE, REFERENCE, 16384, other=4096), "<=", 4.3),
        ("memory lsg_norm 16384 / 4096", ratio(REFERENCE, REFERENCE, 16384, "peak_bytes", 4096), "<=", 4.3),
        ("memory lsg_norm / full_sdpa at 4096, per position", per_position(ratio(REFERENCE, "full_sdpa", 4096,
                                                                                "peak_bytes")), "<=", 1.0),
    ]
    if dropout is not None:
        checks += [
            (f"time lsg_norm dropout {dropout} / no dropout at 4096", ratio(REFERENCE, REFERENCE, 4096, p=dropout),
             "<=", 1.2),
            (f"memory lsg_norm dropout {dropout} / full_sdpa at 4096, per position",
             per_position(ratio(REFERENCE, "full_sdpa", 4096, "peak_bytes", p=dropout)), "<=", 1.0),
        ]
    if kernel is not None:
        checks.append((f"LSG attention fraction of matmul peak at {kernel['length']}",
                       kernel["lsg"]["fraction_of_peak"], ">=", 0.70))
    goals = []
    for name, value, op, target in checks:
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        goals.append({"goal": name, "value": value, "target": f"{op} {target}", "met": met})
    return goals


def plot(cells: list[dict[str, Any]], path: Path, title: str) -> None:
    """Time and memory vs length, log-log, one line per system; saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for system in dict.fromkeys(c["system"] for c in cells):
        done = sorted((c for c in cells if c["system"] == system and c["status"] == "ok" and not c["dropout"]),
                      key=lambda c: c["length"])
        if not done:
            continue
        style = {"linewidth": 2.5} if system.startswith("lsg") else {"linestyle": "--"}
        lengths = [c["length"] for c in done]
        axes[0].plot(lengths, [c["median_s"] for c in done], marker="o", label=system, **style)
        axes[1].plot(lengths, [c["peak_bytes"] / 2**20 for c in done], marker="o", label=system, **style)
    for axis, label in zip(axes, ("seconds per fwd+bwd step (median)", "peak memory of a step (MiB)"), strict=True):
        axis.set(xscale="log", yscale="log", xlabel="tokens", ylabel=label)
        axis.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with staged_file(path) as staging:
        figure.savefig(staging, dpi=110)
    plt.close(figure)


def plan(args: argparse.Namespace, device: torch.device) -> list[tuple[int, list[Entry]]]:
    """Which systems run at which length and dropout (see --systems, --dropout-lengths); the floor always runs."""
    systems = all_systems()
    chosen = args.systems or [name for name in systems if name != "lsg_norm_blocked"]
    result = []
    for length in args.lengths:
        names = chosen
        if args.systems is None and device.type == "cpu" and length >= 16384:
            names = [name for name in chosen if name in CORE_SYSTEMS]
        names = [FLOOR] + [name for name in names if name != FLOOR]
        entries = [(systems[name], 0.0) for name in names]
        if length in args.dropout_lengths:
            entries += [(systems[name], args.dropout) for name in names if name != FLOOR]
        result.append((length, entries))
    return result


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; returns the path of the JSON written."""
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = Shape(layers=args.layers, hidden=args.hidden, heads=args.heads)
    started = time.perf_counter()
    torch.manual_seed(0)
    peak = matmul_peak(device, dtype)
    kernel_length = 4096 if 4096 in args.lengths else max(args.lengths)
    kernel = kernel_efficiency(shape, args.batch, kernel_length, device, dtype, peak, args.dropout)
    schedule = plan(args, device)
    cells: list[dict[str, Any]] = []
    with tqdm(total=sum(len(s) for _, s in schedule) * (1 + args.repeats), desc="bench", unit="step") as progress:
        for length, entries in schedule:
            cells += run_length(length, entries, args, shape, device, dtype, peak, progress)
            gc.collect()
    add_attention_shares(cells)
    machine = machine_info(device)
    stamp = datetime.now()
    name = re.sub(r"[^a-z0-9]+", "-", f"{machine['gpu'] or machine['cpu']}-{machine['cores']}c".lower()).strip("-")
    path = args.out / f"{name}-{stamp:%Y%m%d-%H%M}.json"
    goals = evaluate_goals(cells, kernel)
    record = {
        "date": stamp.isoformat(timespec="seconds"), "machine": machine, "dtype": str(dtype).removeprefix("torch."),
        "shape": vars(shape), "batch": args.batch, "lengths": args.lengths, "repeats": args.repeats,
        "dropout": args.dropout, "dropout_lengths": args.dropout_lengths, "floor_system": FLOOR,
        "reference_system": REFERENCE, "matmul_peak_gflops": peak, "kernel": kernel, "cells": cells,
        "time_ratios": ratio_table(cells, "median_s"), "memory_ratios": ratio_table(cells, "peak_bytes"),
        "attention_ratios": ratio_table(cells, "attention_s"),
        "dropout_time_ratios": ratio_table(cells, "median_s", args.dropout),
        "dropout_attention_ratios": ratio_table(cells, "attention_s", args.dropout),
        "dropout_step_ratios": dropout_step_ratios(cells),
        "goals": goals, "memory_method": "cuda max_memory_allocated" if device.type == "cuda" else
        "lsg.memory.PeakMemory (live tensors allocated during the warm-up step)",
        "runtime_s": time.perf_counter() - started,
    }
    write_json(path, record)
    title = (f"{machine['gpu'] or machine['cpu']}, {machine['torch_threads']} threads, {record['dtype']}, "
             f"{shape.layers} layers, batch {args.batch}")
    plot(cells, path.with_suffix(".png"), title)
    print(f"\n{title}; matmul peak {peak:.0f} GFLOP/s; LSG attention {kernel['lsg']['gflops']:.1f} GFLOP/s "
          f"({kernel['lsg']['fraction_of_peak']:.0%}) at {kernel_length} tokens")
    fused = kernel["fused"]
    print(f"torch's fused SDPA alone: {fused['dense']['fraction_of_peak']:.0%} of peak dense at "
          f"{fused['dense']['key'][2] - 1} tokens, {fused['lsg_call']['fraction_of_peak']:.0%} on the LSG "
          f"kernel's call shape ({fused['lsg_call']['query'][2]} queries over {fused['lsg_call']['key'][2]} keys)")
    if "lsg_dropout" in kernel:
        print(f"LSG attention with dropout {args.dropout}: {kernel['lsg_dropout']['seconds']:.3f} s, "
              f"x{kernel['lsg_dropout']['ratio_to_no_dropout']:.2f} the kernel without")
    print()
    print(format_table(cells, args.lengths, args.dropout_lengths))
    print()
    for goal in goals:
        value = "n/a" if goal["value"] is None else f"{goal['value']:.4f}"  # 4 places: some sit at the target
        print(f"{'MET ' if goal['met'] else 'n/a ' if goal['met'] is None else 'MISS'} {goal['goal']}: {value} "
              f"(target {goal['target']})")
    print(f"\nwrote {path} and {path.with_suffix('.png')} in {record['runtime_s']:.0f} s")
    return path


if __name__ == "__main__":
    main()
