"""`python -m tools.bench` runs end to end on a tiny encoder; scripts/gpu_check.py explains itself without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools.bench import main, skip_reason
from tools.bench_systems import Shape, all_systems

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_writes_json_and_plot(tmp_path):
    path = main(["--quick", "--layers", "1", "--hidden", "64", "--heads", "4", "--lengths", "512", "--repeats", "1",
                 "--systems", "full_sdpa", "longformer_256", "lsg_norm", "--out", str(tmp_path)])
    record = json.loads(path.read_text())
    assert path.parent == tmp_path and path.with_suffix(".png").stat().st_size > 0
    assert {"machine", "matmul_peak_gflops", "kernel", "cells", "time_ratios", "memory_ratios", "goals",
            "memory_method"} <= set(record)
    assert record["machine"]["cpu"] and record["machine"]["torch"] == torch.__version__
    cells = {cell["system"]: cell for cell in record["cells"]}
    assert set(cells) == {"full_sdpa", "longformer_256", "lsg_norm"}
    for cell in cells.values():
        assert cell["status"] == "ok" and cell["median_s"] > 0 and cell["peak_bytes"] > 0
        assert cell["attention_gflop"] > 0 and len(cell["times_s"]) == cell["repeats"]
    assert record["time_ratios"]["lsg_norm"]["512"] == 1.0
    assert record["kernel"]["lsg"]["gflops"] > 0


def test_quadratic_systems_are_skipped_before_they_run():
    reason = skip_reason(all_systems()["full_eager"], Shape(), 1, 1 << 20, torch.device("cpu"), peak=100.0,
                         max_step_seconds=1e12)
    assert reason is not None and "memory estimate" in reason
    assert skip_reason(all_systems()["lsg_norm"], Shape(), 1, 4096, torch.device("cpu"), peak=100.0,
                       max_step_seconds=1e12) is None


def test_sdpa_with_dropout_counts_as_quadratic():
    """With dropout SDPA runs its math path (T x T probabilities), so long cells are skipped, not run out of memory."""
    sdpa = all_systems()["full_sdpa"]
    for dropout, skipped in ((0.0, False), (0.1, True)):
        reason = skip_reason(sdpa, Shape(attention_dropout=dropout), 1, 1 << 18, torch.device("cpu"), peak=1e9,
                             max_step_seconds=1e12)
        assert (reason is not None) == skipped, reason


def test_bench_with_dropout_runs_and_records_it(tmp_path):
    path = main(["--quick", "--layers", "1", "--hidden", "64", "--heads", "4", "--lengths", "512",
                 "--systems", "full_sdpa", "lsg_norm", "--dropout", "0.1", "--out", str(tmp_path)])
    record = json.loads(path.read_text())
    assert record["shape"]["attention_dropout"] == 0.1 and record["goals"] == []
    assert all(cell["status"] == "ok" for cell in record["cells"])


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
