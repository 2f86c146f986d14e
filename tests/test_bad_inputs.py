"""Fuzz of run.py's validation: over 100 generated bad configs, checkpoints and data files.

Each case goes through `tasks.preflight.validate`, the function `run.py` calls on the composed config, with
every weight load patched to fail the test: each must end in one `ConfigError` line that names the parameter
(or the file and line) before any weight is read. The cases are plain data (`CASES`), so the same list can be
replayed against another version of the code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lsg.assets import minilm_dir

REPO = Path(__file__).resolve().parents[1]
BASE = ["task=bbc_topic", "model=lsg_norm", "logger=none", "trainer=cpu", "trainer.per_device_batch_size=2",
        "task.batch_size=4"]


@dataclass(frozen=True)
class Case:
    """One bad input: overrides (`{data}` / `{checkpoint}` are filled with the generated dirs) and what the
    error must name."""

    name: str
    overrides: tuple[str, ...]
    expect: str
    files: dict[str, str] = field(default_factory=dict)  # data dir: file name -> content
    checkpoint: str | None = None  # a broken checkpoint dir: "empty", "config_only" or "truncated"


def _config_cases() -> list[Case]:
    bad_values = {
        "model.max_length": ["0", "-5", "7", "100", "511"],  # 100 and 511: below MiniLM's own 512 positions
        "model.attention": ["foo"], "model.architecture": ["decoder"],
        "model.lsg.block_size": ["0", "-1"], "model.lsg.sparse_block_size": ["-1", "48", "24"],
        "model.lsg.sparsity_factor": ["-2", "3", "256"], "model.lsg.num_global_tokens": ["0", "513", "-1"],
        "model.lsg.lsh_num_pre_rounds": ["-1"], "model.lsg.lsh_seed": ["-1"], "model.lsg.sparsity_type": ["foo"],
        "model.conversion.global_positional_stride": ["0", "-64"],
        "model.checkpoint": ["/nonexistent/model", "./no/such/dir", "not-a-user/not-a-model-xyz"],
        "model.tokenizer": ["/nonexistent/tokenizer"],
        "task.max_length": ["0", "-1"], "task.batch_size": ["0", "-4", "3"], "task.learning_rate": ["-1"],
        "task.head_learning_rate": ["-0.001"], "task.weight_decay": ["-0.1"], "task.warmup_ratio": ["1.5", "-0.1"],
        "task.threshold": ["2", "-1"], "task.mlm_probability": ["1.5"], "task.epochs": ["-1", "0"],
        "task.num_labels": ["0", "-1"], "task.kind": ["regression"], "task.none_label": ["true"],
        "task.generation.num_beams": ["0"], "task.generation.max_target_length": ["0"],
        "task.generation.min_length": ["-1"],
        "task.data.max_train_samples": ["0", "-1"], "task.data.max_eval_samples": ["0"],
        "task.data.path": ["/nonexistent/data"], "task.data.builder": ["nope"],
        "trainer.device": ["cuda", "tpu"], "trainer.precision": ["fp16", "fp8"], "trainer.seed": ["-1", "4294967296"],
        "trainer.logging_steps": ["0", "-1"], "trainer.eval_batch_size": ["-1", "0"],
        "trainer.per_device_batch_size": ["0"], "trainer.save_steps": ["0"], "trainer.save_total_limit": ["0"],
        "trainer.max_steps": ["0", "-2"], "trainer.freeze_layers": ["-1", "7", "99"],
        "trainer.dataloader_workers": ["-1"], "trainer.eval_split": ["train"], "trainer.tune": ["foo"],
        "logger.name": ["foo"], "logger.mode": ["foo"],
    }
    expect = {"model.checkpoint": "model.checkpoint", "model.tokenizer": "model.tokenizer", "task.batch_size=3":
              "task.batch_size"}
    cases = [Case(f"{key}={value}", (f"{key}={value}",), expect.get(key, key.rsplit(".", 1)[-1]))
             for key, values in bad_values.items() for value in values]
    cases += [
        Case("mask_first_token without pool_with_global",
             ("model.lsg.mask_first_token=true", "model.lsg.pool_with_global=false"), "mask_first_token"),
        Case("truncated model beyond its length", ("model=truncated", "model.max_length=1024"), "model.max_length"),
        Case("global tuning and frozen layers", ("trainer.tune=global_tokens", "trainer.freeze_layers=2"),
             "trainer.freeze_layers"),
        Case("global tuning without LSG", ("model=truncated", "model.max_length=512", "trainer.tune=global_tokens"),
             "trainer.tune"),
        Case("seq2seq task on an encoder", ("task=bbc_headline",), "task=bbc_headline"),
        Case("unknown builder argument", ("+task.data.builder_args.n_rows=5",), "task.data.builder_args"),
        Case("checkpoint dir without anything", ("model.checkpoint={checkpoint}",), "config.json", checkpoint="empty"),
        Case("checkpoint dir without weights", ("model.checkpoint={checkpoint}",), "no weights",
             checkpoint="config_only"),
        Case("checkpoint with truncated weights", ("model.checkpoint={checkpoint}",), "truncated",
             checkpoint="truncated"),
    ]
    return cases


def _jsonl(rows: list) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def _good(split: str, n: int = 6, multi: bool = False) -> list:
    return [{"text": f"{split} document {i} about topic {i % 3}", "label": [i % 3] if multi else i % 3}
            for i in range(n)]


def _data_cases() -> list[Case]:
    cases = []
    for split in ("train", "validation", "test"):
        def files(rows: list, *, multi: bool = False, current: str = split) -> dict[str, str]:
            out = {f"{s}.jsonl": _jsonl(_good(s, multi=multi)) for s in ("train", "validation", "test")}
            out[f"{current}.jsonl"] = _jsonl(rows)
            return out

        good = _good(split)
        variants = {
            "empty file": ([], "empty file"),
            "truncated JSON line": (good[:2] + ['{"text": "cut', *good[2:]], f"{split}.jsonl:3"),
            "a line that is a list": (good[:3] + ['["text", 1]', *good[3:]], f"{split}.jsonl:4"),
            "a bare word line": (good[:1] + ["oops", *good[1:]], f"{split}.jsonl:2"),
            "no text field": (good[:4] + [{"label": 1}, *good[4:]], f"{split}.jsonl:5"),
            "no label field": (good[:2] + [{"text": "x"}, *good[2:]], f"{split}.jsonl:3"),
            "null text": (good[:1] + [{"text": None, "label": 0}, *good[1:]], f"{split}.jsonl:2"),
            "null label": (good[:5] + [{"text": "x", "label": None}], f"{split}.jsonl:6"),
            "label -1": (good[:3] + [{"text": "x", "label": -1}, *good[3:]], f"{split}.jsonl:4"),
            "label beyond num_labels": (good[:2] + [{"text": "x", "label": 7}, *good[2:]], f"{split}.jsonl:3",
                                        "task.num_labels=3"),
            "list label on a single-label task": (good[:2] + [{"text": "x", "label": [1]}, *good[2:]],
                                                  f"{split}.jsonl:3"),
            "non-integral float label": (good[:1] + [{"text": "x", "label": 1.5}, *good[1:]], f"{split}.jsonl:2"),
            "numeric text": (good[:3] + [{"text": 42, "label": 1}, *good[3:]], f"{split}.jsonl:4"),
            "boolean label": (good[:3] + [{"text": "x", "label": True}, *good[3:]], f"{split}.jsonl:4"),
        }
        if split != "train":  # a label name in train is the class set: an unseen one is an error elsewhere
            variants["label name never seen in train"] = (good[:2] + [{"text": "x", "label": "sport"}, *good[2:]],
                                                          f"{split}.jsonl:3")
        for name, (rows, expect, *extra) in variants.items():
            cases.append(Case(f"{split}: {name}", ("task.data.path={data}", *extra), expect, files=files(rows)))
        multi = _good(split, multi=True)
        multi_variants = {
            "unknown multi-label id": (multi[:2] + [{"text": "x", "label": [1, 12]}, *multi[2:]], f"{split}.jsonl:3"),
            "a single id on a multi-label task": (multi[:3] + [{"text": "x", "label": 1}, *multi[3:]],
                                                  f"{split}.jsonl:4"),
        }
        for name, (rows, expect) in multi_variants.items():
            cases.append(Case(f"{split}: {name}", ("task.data.path={data}", "task.multi_label=true",
                                                   "task.num_labels=3"), expect, files=files(rows, multi=True)))
    good = {f"{s}.jsonl": _jsonl(_good(s)) for s in ("train", "validation", "test")}
    cases += [
        Case("num_labels below the data's", ("task.data.path={data}", "task.num_labels=2"), "train.jsonl:3",
             files=good),
        Case("mixed names and ids", ("task.data.path={data}",), "mixes class names",
             files={**good, "test.jsonl": _jsonl([{"text": "x", "label": "sport"}, *_good("test")])}),
        Case("mixed file formats", ("task.data.path={data}",), "task.data.path",
             files={**good, "test.csv": "text,label\nx,1\n"}),
        Case("no data file", ("task.data.path={data}",), "task.data.path", files={"notes.txt": "hello"}),
        Case("no train file", ("task.data.path={data}",), "task.data.splits.train",
             files={"validation.jsonl": good["validation.jsonl"]}),
        Case("csv without the label column", ("task.data.path={data}",), "train.csv:2",
             files={"train.csv": "text,topic\nsome text,1\n"}),
        Case("empty csv", ("task.data.path={data}",), "train.csv", files={"train.csv": ""}),
        Case("csv with an empty label cell", ("task.data.path={data}",), "train.csv:3",
             files={"train.csv": "text,label\na,1\nb,\nc,0\n"}),
        Case("wrong text field", ("task.data.path={data}", "task.data.text_field=body"), "task.data.text_field",
             files=good),
        Case("wrong label field", ("task.data.path={data}", "task.data.label_field=topic"), "task.data.label_field",
             files=good),
        Case("json array cut short", ("task.data.path={data}",), "train.json:1",
             files={"train.json": '[{"text": "a", "label": 0}, {"text": "b"'}),
    ]
    return cases


CASES = _config_cases() + _data_cases()


def materialize(case: Case, root: Path) -> list[str]:
    """The case's overrides, its data files and broken checkpoint written under `root`."""
    data, checkpoint = root / "data", root / "checkpoint"
    if case.files:
        data.mkdir(parents=True)
        for name, text in case.files.items():
            (data / name).write_text(text, encoding="utf-8")
    if case.checkpoint:
        checkpoint.mkdir(parents=True)
        if case.checkpoint != "empty":
            shutil.copy(minilm_dir() / "config.json", checkpoint / "config.json")
        if case.checkpoint == "truncated":  # a copy (or a save) cut short: the header says more than the file holds
            (checkpoint / "model.safetensors").write_bytes((minilm_dir() / "model.safetensors").read_bytes()[:4096])
    overrides = [o.format(data=data, checkpoint=checkpoint) for o in case.overrides]
    replaced = {o.split("=", 1)[0] for o in overrides}
    return [*(o for o in BASE if o.split("=", 1)[0] not in replaced), f"runs_dir={root / 'runs'}", *overrides]


def test_there_are_over_100_distinct_cases():
    assert len(CASES) >= 100 and len({case.name for case in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def compose_config():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        yield lambda overrides: compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()


@pytest.fixture
def no_weights(monkeypatch):
    """Any weight load fails the test: validation must never get that far."""
    import safetensors.torch
    import torch
    import transformers

    def loaded(*args, **kwargs):
        pytest.fail("weights were loaded during validation")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(safetensors.torch, "load_file", loaded)
    monkeypatch.setattr(torch, "load", loaded)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_input_stops_validation_with_one_line(case, compose_config, no_weights, tmp_path):
    from tasks.config import ConfigError
    from tasks.preflight import validate

    with pytest.raises(ConfigError) as raised:
        validate(compose_config(materialize(case, tmp_path)))
    message = str(raised.value)
    assert "\n" not in message, message
    assert case.expect in message, message


# --- the library API and the converter CLI ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    import transformers

    return transformers.AutoModel.from_pretrained(minilm_dir())


@pytest.mark.parametrize(("keywords", "expect"), [
    ({"tokenizer": "not-a-user/no-such-tokenizer"}, "tokenizer='not-a-user/no-such-tokenizer' could not be loaded"),
    ({"tokenizer": 3}, "tokenizer=3 must be a tokenizer"),
    ({"seed": None}, "seed=None must be an integer"),
    ({"max_length": 10**9}, "max_length=1000000000 is out of range: it must be in [512, 1048576]"),
    ({"max_length": "4096"}, "max_length='4096' must be an integer"),
    ({"mask_first_token": "yes"}, "mask_first_token='yes' must be True or False"),
    ({"adaptive": 1}, "adaptive=1 must be True or False"),
    ({"random_global_init": "false"}, "random_global_init='false' must be True or False"),
], ids=["tokenizer-hub-id-offline", "tokenizer-int", "seed-none", "max-length-huge", "max-length-str",
        "bool-as-yes", "bool-as-1", "bool-as-false-string"])
def test_convert_refuses_bad_arguments_with_one_line(minilm, keywords, expect):
    import lsg

    keywords = dict(keywords)
    with pytest.raises(ValueError) as raised:
        lsg.convert(minilm, keywords.pop("tokenizer", None), **keywords)
    assert expect in str(raised.value) and "\n" not in str(raised.value)


def test_convert_loads_a_tokenizer_given_by_its_directory(minilm):
    import lsg

    converted = lsg.convert(minilm, str(minilm_dir()), max_length=1024, block_size=64, sparsity_factor=2)
    assert converted.config.max_position_embeddings == 1024


@pytest.mark.parametrize("broken", ["empty", "config_only", "truncated"])
def test_lsg_load_refuses_an_incomplete_save(broken, tmp_path):
    import lsg

    materialize(Case("load", (), "", checkpoint=broken), tmp_path)
    with pytest.raises(ValueError, match="holds no complete save"):
        lsg.load(tmp_path / "checkpoint")


@pytest.mark.parametrize(("model", "out", "extra", "expect"), [
    ("/nonexistent/model", "out", [], "--model /nonexistent/model does not exist"),
    ("{tmp}/checkpoint", "out", [], "no weights"),
    (None, "a-file/sub", [], "cannot be written"),
    (None, "a-file", ["--overwrite"], "is a file; give a directory path"),
], ids=["missing-model", "model-without-weights", "out-under-a-file", "out-is-a-file"])
def test_convert_cli_refuses_before_loading(model, out, extra, expect, tmp_path, capsys, no_weights):
    from lsg.convert import main

    materialize(Case("cli", (), "", checkpoint="config_only"), tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    model = model.format(tmp=tmp_path) if model else str(minilm_dir())
    with pytest.raises(SystemExit) as info:
        main(["--model", model, "--out", str(tmp_path / out), *extra])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and expect in error


# --- legal but suspicious data: warnings, not errors ------------------------------------------------------------

def _task(tmp_path: Path, rows: dict[str, list], **fields):
    from tasks.config import DataConfig, TaskConfig

    for split, split_rows in rows.items():
        (tmp_path / f"{split}.jsonl").write_text(_jsonl(split_rows))
    return TaskConfig(name="local", kind="classification", metric="accuracy", **fields,
                      data=DataConfig(path=str(tmp_path)))


def test_suspicious_data_warns(tmp_path, caplog):
    from tasks.data_checks import check_data_files

    train = [{"text": "a b", "label": 0.0}, {"text": "  ", "label": 1.0}, {"text": "c", "label": 0}]
    task = _task(tmp_path, {"train": train, "test": [{"text": "d", "label": 1}]}, num_labels=4)
    with caplog.at_level("WARNING"):
        check_data_files(task)
    warned = " | ".join(record.getMessage() for record in caplog.records)
    assert "2 labels are floats" in warned and "train.jsonl:1" in warned
    assert "classes [2, 3] never occur in the training split" in warned
    assert "1 of 3 rows have an empty 'text'" in warned and "train.jsonl:2" in warned


def test_good_data_passes_silently(tmp_path, caplog):
    from tasks.data_checks import check_data_files

    rows = {split: [{"text": f"{split} {i}", "label": ["sport", "tech"][i % 2]} for i in range(4)]
            for split in ("train", "validation", "test")}
    with caplog.at_level("WARNING"):
        check_data_files(_task(tmp_path, rows))
    assert not caplog.records


def test_builder_splits_are_checked_with_their_class_labels():
    from tasks.config import ConfigError, DataConfig, TaskConfig
    from tasks.data import build_bbc_topic
    from tasks.data_checks import check_splits

    splits = build_bbc_topic()

    def task(**fields) -> TaskConfig:
        return TaskConfig(name="bbc_topic", kind="classification", metric="accuracy",
                          data=DataConfig(builder="bbc_topic", **fields))

    check_splits(splits, task())
    with pytest.raises(ConfigError, match=r"split 'train' has no 'topic' column \(task.data.label_field='topic'\)"):
        check_splits(splits, task(label_field="topic"))


@pytest.mark.slow
def test_run_py_prints_one_line_and_exits_2(tmp_path):
    """The real CLI: no Hydra traceback above the message, exit status 2, nothing but Hydra's own .hydra/ written."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "run.py", "logger=none", f"runs_dir={tmp_path}", "trainer.seed=-1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: trainer.seed=-1 is out of range: it must be in [0, 4294967295]"]
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {"config.yaml", "hydra.yaml", "overrides.yaml", "run.log"}  # Hydra's, before main() runs
