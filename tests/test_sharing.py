"""Sharing converted models: the card every save writes, `--push-to-hub`, pipeline(), offline diagnostics.

The models are tiny random BERTs with the real MiniLM WordPiece tokenizer, converted in-process. The upload is
checked with a recording client (the folder it would commit) and with the real client under HF_HUB_OFFLINE,
which must fail before anything is uploaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import OfflineModeIsEnabled
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification, pipeline

import lsg
from lsg.assets import minilm_dir
from lsg.convert import main
from lsg.hub import DISTRIBUTION, offline_hint, push_folder

REPO = Path(__file__).resolve().parents[1]
SETTINGS = lsg.LSGSettings(block_size=16, sparse_block_size=16, sparsity_factor=4)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


def _converted(head: type, tokenizer, **config) -> torch.nn.Module:
    source = head(BertConfig(vocab_size=len(tokenizer), **TINY, **config)).eval()
    return lsg.convert(source, tokenizer, SETTINGS, max_length=256).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A converted fill-mask and a 3-label classification model, each saved with its tokenizer."""
    out = {}
    for name, head, extra in (("fill-mask", BertForMaskedLM, {}),
                              ("text-classification", BertForSequenceClassification, {"num_labels": 3})):
        path = tmp_path_factory.mktemp(name)
        _converted(head, tokenizer, **extra).save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = path
    return out


def test_every_save_writes_a_card_saying_how_to_load_it(saved):
    card = ModelCard.load(saved["fill-mask"] / "README.md")
    assert card.data.library_name == DISTRIBUTION and card.data.pipeline_tag == "fill-mask"
    assert "lsg" in card.data.tags and "lsg_bert" in card.data.tags
    assert f"pip install {DISTRIBUTION}" in card.text and "import lsg" in card.text
    assert "AutoModelForMaskedLM.from_pretrained" in card.text and "| `block_size` | 16 |" in card.text
    assert "256 tokens" in card.text
    assert ModelCard.load(saved["text-classification"] / "README.md").data.pipeline_tag == "text-classification"


def test_saved_model_reloads_with_the_same_outputs(saved, tokenizer):
    model = lsg.load(saved["fill-mask"]).eval()
    again = lsg.load(saved["fill-mask"]).eval()
    batch = tokenizer(["a long document " * 40], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, again(**batch).logits, atol=0, rtol=0)


def test_fill_mask_pipeline_on_a_converted_checkpoint(saved):
    fill = pipeline("fill-mask", model=str(saved["fill-mask"]))
    assert type(fill.model).__name__ == "LSGBertForMaskedLM"
    text = "the court read a long document . " * 30 + "the [MASK] was long ."  # > 2 blocks: sparse keys are used
    predictions = fill(text, top_k=3)
    assert len(predictions) == 3 and all("[MASK]" not in p["sequence"] for p in predictions)


def test_text_classification_pipeline_batched_equals_unbatched(saved):
    classify = pipeline("text-classification", model=str(saved["text-classification"]), top_k=None)
    assert type(classify.model).__name__ == "LSGBertForSequenceClassification"
    long_text, short_text = "facts of the case " * 200, "a short one"  # the long one exceeds 256 tokens
    [alone] = classify([long_text], truncation=True)
    batched = classify([long_text, short_text], truncation=True, padding=True, batch_size=2)
    assert len(alone) == 3
    scores = {row["label"]: row["score"] for row in alone}
    assert {row["label"]: row["score"] for row in batched[0]} == pytest.approx(scores, abs=1e-5)


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the files of the folder at upload time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.files: list[str] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        self.files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"


def test_cli_pushes_model_tokenizer_and_card_in_one_commit(tokenizer, tmp_path, monkeypatch):
    source = tmp_path / "source"
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **TINY)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    api = RecordingApi()
    monkeypatch.setattr("lsg.hub.HfApi", lambda: api)
    main(["--model", str(source), "--out", str(tmp_path / "out"), "--max-length", "256", "--block-size", "16",
          "--push-to-hub", "someone/lsg-tiny", "--private"])
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "someone/lsg-tiny", "private": True, "token": None, "exist_ok": True}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(api.files)
    card = (tmp_path / "out" / "README.md").read_text()
    assert 'from_pretrained("someone/lsg-tiny")' in card


def test_private_needs_push_to_hub(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "x", "--out", str(tmp_path / "out"), "--private"])
    assert "--push-to-hub" in capsys.readouterr().err


def test_real_client_offline_fails_before_uploading(saved):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest
    with pytest.raises(OfflineModeIsEnabled, match="repos/create"):
        push_folder(saved["fill-mask"], "someone/lsg-tiny")


def test_offline_hint_names_the_variables_that_are_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert "HF_HUB_OFFLINE=1" in offline_hint() and "TRANSFORMERS_OFFLINE" not in offline_hint()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert offline_hint() == ""


def test_convert_cli_names_the_variable_that_blocked_the_download(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "FacebookAI/roberta-base", "--out", str(tmp_path / "out")])
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}


def test_run_py_is_online_by_default():
    code = "import os, run; print(sorted(k for k in os.environ if k.endswith('_OFFLINE')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_run_py_offline_true_blocks_the_hub_and_says_which_variable(tmp_path):
    command = [sys.executable, "run.py", "task=ecthr_a", "model=lsg_norm", "logger=none", "offline=true",
               f"runs_dir={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, env={**_clean_env(), "HYDRA_FULL_ERROR": "1"},
                            capture_output=True, text=True)
    # the checkpoint's config is read (and refused) before any data: one line naming it and the variable
    assert result.returncode == 2
    assert "model.checkpoint='roberta-base'" in result.stderr and "HF_HUB_OFFLINE=1" in result.stderr


def test_go_offline_takes_effect_after_the_hub_libraries_were_imported():
    """offline=true runs after `import lsg` imported huggingface_hub and datasets, which read the variables at import:
    the loads must still fail at once offline, without retrying the network."""
    code = ("import lsg, datasets, transformers\nfrom lsg.hub import go_offline\ngo_offline()\n"
            "for load in (lambda: transformers.AutoConfig.from_pretrained('roberta-base'),\n"
            "             lambda: datasets.load_dataset('stanfordnlp/imdb')):\n"
            "    try:\n        load()\n    except Exception as error:\n        print(type(error).__name__)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OSError", "ConnectionError"]
    assert "Retrying" not in result.stderr  # the network was never tried
