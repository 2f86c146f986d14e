"""The MASFormer experiment (`tasks.masformer`): its plans, and a tiny end-to-end sweep of the causal LM."""

import dataclasses
import json

import pytest

from lsg.settings import LSGSettings
from tasks import masformer


def test_the_fractions_give_0_1_2_and_6_full_layers_at_the_bottom():
    plans = masformer.plans_for(6)
    assert [plan.count("full") for plan in plans] == [0, 1, 2, 6]
    assert plans[2] == ["full", "full", "lsg", "lsg", "lsg", "lsg"]
    assert [plan.count("full") for plan in masformer.plans_for(12)] == [0, 2, 4, 12]


@pytest.mark.slow
def test_a_tiny_language_model_sweep_writes_the_table_the_plot_and_resumes(tmp_path):
    scale = dataclasses.replace(
        masformer.SCALES["smoke"],
        lm_width=16,
        lm_length=64,
        lm_batch=2,
        lm_steps=3,
        lm_eval_blocks=2,
        lm=LSGSettings(block_size=8, sparse_block_size=8, sparsity_factor=4, sparsity_type="pooling"),
    )
    rows = masformer.sweep(scale, tmp_path, ("wiki_lm",))
    assert [row["full_layers"] for row in rows] == [0, 1, 2, 6]
    costs = [row["attention_cost"] for row in rows]
    assert costs == sorted(costs) and costs[-1] == 1.0 and costs[0] < 1.0
    assert all(0 < row["bits_per_byte"] < 9 for row in rows)  # a random byte model scores 8 bits
    saved = json.loads((tmp_path / "wiki_lm-full2.json").read_text(encoding="utf-8"))
    assert saved["plan"] == ["full", "full", "lsg", "lsg", "lsg", "lsg"]
    assert masformer.sweep(scale, tmp_path, ("wiki_lm",)) == rows  # resumed from the saved runs
    report = masformer.table(rows, "tiny")
    assert "| wiki_lm | 2 / 6 | bits_per_byte" in report
    masformer.plot(rows, tmp_path / "masformer.png")
    assert (tmp_path / "masformer.png").read_bytes()[:4] == b"\x89PNG"


def test_a_saved_plan_of_another_budget_is_refused_not_reused(tmp_path):
    from tasks.run_identity import RunDirConflictError

    scale = dataclasses.replace(
        masformer.SCALES["smoke"], lm_width=16, lm_length=32, lm_batch=2, lm_steps=1, lm_eval_blocks=1,
        lm=LSGSettings(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="pooling"))
    rows = masformer.sweep(scale, tmp_path, ("wiki_lm",))
    assert rows[0]["scale"]["lm_steps"] == 1
    assert masformer.sweep(scale, tmp_path, ("wiki_lm",)) == rows  # the same budget resumes
    bigger = dataclasses.replace(scale, lm_steps=2)
    with pytest.raises(RunDirConflictError, match=r"wiki_lm-full0.json was trained at other settings: lm_steps: 1"):
        masformer.sweep(bigger, tmp_path, ("wiki_lm",))
    rerun = masformer.sweep(bigger, tmp_path, ("wiki_lm",), force=True)
    assert [row["scale"]["lm_steps"] for row in rerun] == [2, 2, 2, 2]
