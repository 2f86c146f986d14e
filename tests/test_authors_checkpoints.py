"""Checkpoints saved by the authors' converter load into this library without running their remote code.

The directories are built here in the authors' layout (design §1.1, §2.1): the source `model_type`, the LSG
fields plus `base_model_prefix: "lsg"`, an `auto_map` to remote modeling files, `LSG...` architecture names,
the same weight names as ours, and the `position_ids` buffer older transformers versions saved.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import main_output, tiny_inputs, tiny_model
from safetensors.torch import load_file, save_file

import lsg

SMALL = dict(block_size=8, sparse_block_size=8, sparsity_factor=2, bos_token_id=0, mask_token_id=4)
REMOTE_CODE = "raise RuntimeError('the remote modeling file was executed')\n"


def authors_layout(model, path: Path, *, extra: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Save `model` (converted here) as the authors' converter would have saved it."""
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    family = lsg.families.family_of(model.config)
    module = f"modeling_lsg_{family.model_type.replace('-', '_')}"
    config.update(
        model_type=family.model_type, base_model_prefix="lsg",
        auto_map={"AutoConfig": f"{module}.LSG{family.name}Config",
                  "AutoModel": f"{module}.LSG{family.name}Model",
                  "AutoModelForMaskedLM": f"{module}.LSG{family.name}ForMaskedLM"},
    )
    config.pop("attn_implementation", None)
    (path / "config.json").write_text(json.dumps(config))
    (path / f"{module}.py").write_text(REMOTE_CODE)
    weights = load_file(path / "model.safetensors")
    if not family.is_encoder_decoder:  # a buffer older transformers versions saved with BERT-like weights
        weights[f"{model.base_model_prefix}.embeddings.position_ids"] = torch.arange(8)[None]
    weights.update(extra or {})
    for key in drop:
        del weights[key]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.parametrize(("family", "head"), [("roberta", "ForMaskedLM"), ("bert", "ForSequenceClassification"),
                                              ("bart", "ForConditionalGeneration"), ("distilbert", "ForMaskedLM")])
def test_authors_checkpoint_loads_into_our_classes(family, head, tmp_path):
    converted = lsg.convert(tiny_model(family, head), max_length=128, num_global_tokens=3, sparsity_type="lsh",
                            **SMALL)
    path = authors_layout(converted, tmp_path)
    loaded = lsg.load(path).eval()
    assert type(loaded) is type(converted)
    assert loaded.config.model_type == f"lsg_{family}" and loaded.config.sparsity_type == "lsh"
    assert loaded.config._attn_implementation == "lsg"
    batch = tiny_inputs(family, head, 100)
    with torch.no_grad():
        torch.testing.assert_close(main_output(loaded(**batch)), main_output(converted(**batch)), atol=0, rtol=0)


def test_authors_checkpoint_can_get_another_head(tmp_path):
    converted = lsg.convert(tiny_model("roberta", "ForMaskedLM"), max_length=128, **SMALL)
    classifier = lsg.load(authors_layout(converted, tmp_path), architecture="ForSequenceClassification",
                          num_labels=4)
    assert type(classifier).__name__ == "LSGRobertaForSequenceClassification" and classifier.config.num_labels == 4
    torch.testing.assert_close(classifier.roberta.embeddings.global_embeddings.weight,
                               converted.roberta.embeddings.global_embeddings.weight)


def test_unknown_weights_are_named(tmp_path):
    converted = lsg.convert(tiny_model("roberta", "ForMaskedLM"), max_length=128, **SMALL)
    path = authors_layout(converted, tmp_path, extra={"roberta.embeddings.segment_table.weight": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match="unknown weights.*roberta.embeddings.segment_table.weight"):
        lsg.load(path)


def test_missing_global_table_is_named(tmp_path):
    converted = lsg.convert(tiny_model("bart"), max_length=128, **SMALL)
    path = authors_layout(converted, tmp_path, drop=("model.encoder.global_embeddings.weight",))
    with pytest.raises(ValueError, match="missing weights.*model.encoder.global_embeddings.weight"):
        lsg.load(path)


def test_plain_checkpoints_are_still_refused(tmp_path):
    tiny_model("roberta", "ForMaskedLM").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an LSG one"):
        lsg.load(tmp_path)
