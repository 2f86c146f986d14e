"""The W&B dashboard of Table 2 (tasks/dashboard.py), checked on the spec written offline (no API key)."""

import json

import pytest

pytest.importorskip("wandb_workspaces")

from tasks import dashboard  # noqa: E402


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboard") / "dashboard.json"
    dashboard.main(["table2", "--out", str(out)])
    return json.loads(out.read_text())


def _grids(spec):
    return [block for block in spec["spec"]["blocks"] if block["type"] == "panel-grid"]


def test_one_grid_per_dataset_in_the_papers_order(spec):
    headings = [block["children"][0]["text"] for block in spec["spec"]["blocks"] if block["type"] == "heading"]
    assert headings == ["IMDb", "Arxiv", "Patent", "Scotus", "ECtHRa", "ECtHRb"] and len(_grids(spec)) == 6


def test_runsets_select_the_tables_group_and_the_datasets_tag(spec):
    for grid, task in zip(_grids(spec), ("imdb", "arxiv", "patent", "scotus", "ecthr_a", "ecthr_b"), strict=True):
        filters = json.dumps(grid["metadata"]["runSets"][0]["filters"])
        assert '"name": "group"}, "op": "=", "value": "table2"' in filters
        assert f'"op": "IN", "value": ["task:{task}"]' in filters


def test_panels_draw_ours_beside_the_papers_value(spec):
    text = [json.dumps(grid["metadata"]["panelBankSectionConfig"]) for grid in _grids(spec)]
    assert "test/micro_f1" in text[0] and "paper/micro_f1" in text[0] and "macro_f1" not in text[0]  # IMDb
    assert all("test/macro_f1" in t and "paper/macro_f1" in t for t in text[1:])
