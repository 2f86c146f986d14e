"""`python -m tools.bench` runs end to end on a tiny encoder; scripts/gpu_check.py explains itself without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools.bench import add_attention_shares, evaluate_goals, format_table, main, skip_reason
from tools.bench_systems import Shape, all_systems

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_writes_json_and_plot(tmp_path):
    path = main(["--quick", "--layers", "1", "--hidden", "64", "--heads", "4", "--lengths", "512", "--repeats", "1",
                 "--systems", "full_sdpa", "longformer_256", "lsg_norm", "--out", str(tmp_path)])
    record = json.loads(path.read_text())
    assert path.parent == tmp_path and path.with_suffix(".png").stat().st_size > 0
    assert {"machine", "matmul_peak_gflops", "kernel", "cells", "time_ratios", "memory_ratios", "attention_ratios",
            "dropout_step_ratios", "goals", "memory_method"} <= set(record)
    assert record["machine"]["cpu"] and record["machine"]["torch"] == torch.__version__
    cells = {cell["system"]: cell for cell in record["cells"]}
    assert set(cells) == {"floor", "full_sdpa", "longformer_256", "lsg_norm"}  # the floor always runs
    for name, cell in cells.items():
        assert cell["status"] == "ok" and cell["median_s"] > 0 and cell["peak_bytes"] > 0 and cell["dropout"] == 0
        assert (cell["attention_gflop"] > 0) == (name != "floor") and len(cell["times_s"]) == cell["repeats"]
        if name != "floor":
            assert cell["attention_s"] == pytest.approx(cell["median_s"] - cells["floor"]["median_s"])
    assert record["time_ratios"]["lsg_norm"]["512"] == 1.0 and record["attention_ratios"]["lsg_norm"]["512"] == 1.0
    assert record["kernel"]["lsg"]["gflops"] > 0 and record["dropout_lengths"] == []  # no 4096 here
    fused = record["kernel"]["fused"]  # torch's own fused kernel, the yardstick of the fraction of peak
    # the kernel's own chunking: 4 heads of 16 hold all 4 blocks of 512 tokens in one call (2 at RoBERTa-base's)
    assert fused["dense"]["query"] == [1, 4, 513, 16] and fused["lsg_call"]["key"] == [4, 4, 384, 16]
    assert all(fused[label]["fraction_of_peak"] > 0 for label in ("dense", "lsg_call"))


def test_quadratic_systems_are_skipped_before_they_run():
    reason = skip_reason(all_systems()["full_eager"], Shape(), 1, 1 << 20, torch.device("cpu"), peak=100.0,
                         max_step_seconds=1e12)
    assert reason is not None and "memory estimate" in reason
    assert skip_reason(all_systems()["lsg_norm"], Shape(), 1, 4096, torch.device("cpu"), peak=100.0,
                       max_step_seconds=1e12) is None


def test_sdpa_with_dropout_counts_as_quadratic_on_cpu():
    """With dropout SDPA runs its math path on CPU (T x T probabilities), so long cells are skipped, not run out of
    memory; CUDA's fused kernels take dropout."""
    sdpa = all_systems()["full_sdpa"]
    for dropout, skipped in ((0.0, False), (0.1, True)):
        reason = skip_reason(sdpa, Shape(attention_dropout=dropout), 1, 1 << 18, torch.device("cpu"), peak=1e9,
                             max_step_seconds=1e12)
        assert (reason is not None) == skipped, reason
    assert sdpa.quadratic_bytes(Shape(attention_dropout=0.1), 1, 1 << 18, torch.device("cuda")) == 0


def test_bench_dropout_column_runs_every_system_again_with_dropout(tmp_path):
    path = main(["--quick", "--layers", "1", "--hidden", "64", "--heads", "4", "--lengths", "512", "1024",
                 "--systems", "full_sdpa", "lsg_norm", "--dropout-lengths", "1024", "--out", str(tmp_path)])
    record = json.loads(path.read_text())
    cells = {(c["system"], c["length"], c["dropout"]) for c in record["cells"] if c["status"] == "ok"}
    assert cells == {(system, length, 0.0) for system in ("floor", "full_sdpa", "lsg_norm") for length in (512, 1024)} \
        | {("full_sdpa", 1024, 0.1), ("lsg_norm", 1024, 0.1)}
    assert set(record["dropout_step_ratios"]) == {"full_sdpa", "lsg_norm"}
    assert record["dropout_time_ratios"]["lsg_norm"]["1024"] == 1.0
    assert record["kernel"]["lsg_dropout"]["dropout"] == 0.1
    assert record["shape"]["attention_dropout"] == 0.0  # the main cells run without dropout


def synthetic_cells(lsg: float, lsg_dropout: float) -> list[dict]:
    rows = [("floor", 0.0, 1.0, 300), ("full_sdpa", 0.0, 2.5, 500), ("longformer_512", 0.0, 3.1, 900),
            ("bigbird", 0.0, 2.3, 1200), ("lsg_norm", 0.0, lsg, 450), ("lsg_norm", 0.1, lsg_dropout, 460)]
    return [{"system": system, "length": 4096, "dropout": p, "status": "ok", "median_s": seconds,
             "peak_bytes": mib * 2**20} for system, p, seconds, mib in rows]


def test_goals_compare_attention_shares_and_the_dropout_step():
    """Longformer 3.1 s and BigBird 2.3 s against LSG 1.6 s over a 1.0 s floor: whole steps 1.94x and 1.44x, but
    attention shares 3.5x and 2.17x; the dropout step 1.9 s is 1.19x LSG's."""
    cells = synthetic_cells(1.6, 1.9)
    add_attention_shares(cells)
    goals = {goal["goal"]: goal for goal in evaluate_goals(cells, None)}
    assert goals["attention longformer_512 / lsg_norm at 4096"]["value"] == pytest.approx(2.1 / 0.6)
    assert goals["attention bigbird / lsg_norm at 4096"]["value"] == pytest.approx(1.3 / 0.6)
    assert goals["time lsg_norm dropout 0.1 / no dropout at 4096"]["value"] == pytest.approx(1.9 / 1.6)
    assert all(goals[name]["met"] for name in ("attention longformer_512 / lsg_norm at 4096",
                                               "attention bigbird / lsg_norm at 4096",
                                               "time lsg_norm dropout 0.1 / no dropout at 4096",
                                               "memory lsg_norm dropout 0.1 / full_sdpa at 4096, per position"))
    # LSG's 4097 positions against SDPA's 4096: the same memory per position meets the goal, one byte more does not
    same_per_position = synthetic_cells(1.6, 1.9)
    same_per_position[-2]["peak_bytes"] = 500 * 2**20 * 4097 / 4096
    memory = {goal["goal"]: goal for goal in evaluate_goals(same_per_position, None)}
    assert memory["memory lsg_norm / full_sdpa at 4096, per position"]["value"] == pytest.approx(1.0)
    same_per_position[-2]["peak_bytes"] += 1
    memory = {goal["goal"]: goal for goal in evaluate_goals(same_per_position, None)}
    assert memory["memory lsg_norm / full_sdpa at 4096, per position"]["met"] is False
    slow = {goal["goal"]: goal["met"] for goal in evaluate_goals(synthetic_cells(1.6, 2.0), None)}
    assert slow["time lsg_norm dropout 0.1 / no dropout at 4096"] is False
    table = format_table(cells, [4096], [4096])
    assert "| lsg_norm | 1.60, 450 (1.00, 1.00) | 0.60 (1.00) | 1.90, 460 (x1.19; 1.00) |" in table


def test_bench_refuses_dropout_lengths_it_does_not_run(capsys):
    with pytest.raises(SystemExit):
        main(["--lengths", "1024", "--dropout-lengths", "4096"])
    assert "--dropout-lengths must be among --lengths [1024], got [4096]" in capsys.readouterr().err


@pytest.mark.parametrize("dropout", ["-0.1", "1.0"])
def test_bench_refuses_a_dropout_outside_0_1(dropout, capsys):
    with pytest.raises(SystemExit):
        main(["--dropout", dropout])
    assert f"--dropout must be in [0, 1), got {float(dropout)}" in capsys.readouterr().err


def test_gpu_check_explains_itself_without_cuda():
    script = str(ROOT / "scripts" / "gpu_check.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True)
    assert "--lengths" in help_text.stdout
    if not torch.cuda.is_available():
        run = subprocess.run([sys.executable, script, "--no-timing"], capture_output=True, text=True)
        assert run.returncode == 2 and "no CUDA device" in run.stderr
