"""`python -m lsg.convert` round trips on tiny random checkpoints saved locally (design §1.2, §2.1).

The sources are built in code (BERT with a hand-written WordPiece vocabulary, RoBERTa with a byte-level
BPE trained on one sentence), saved with their tokenizer, converted by `lsg.convert.main` in-process,
and compared with the in-memory `lsg.convert` of the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AddedToken,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizer,
)

import lsg
from lsg.convert import ConversionSettings, _parser, main
from lsg.convert.flags import add_flags, field_docs
from lsg.settings import LSGSettings

REPO = Path(__file__).resolve().parents[1]
LSG_FIELDS = ("block_size", "sparse_block_size", "sparsity_factor", "sparsity_type", "num_global_tokens",
              "mask_first_token", "pool_with_global", "lsh_num_pre_rounds", "adaptive")
WORDS = ["the", "a", "long", "document", "is", "read", "by", "lsg", "attention", "model", "with", "local", "sparse",
         "and", "global", "tokens"]
# hidden 32, 2 layers, 4 heads (STYLE.md "Tiny configs"); dropout off so outputs are deterministic
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

# Non-default values everywhere, so a field the CLI forgot to forward shows up as a mismatch.
CONVERSIONS: dict[str, dict[str, Any]] = {
    "bert": dict(max_length=128, block_size=16, sparse_block_size=8, sparsity_factor=4, sparsity_type="norm",
                 num_global_tokens=2, mask_first_token=True, pool_with_global=True, lsh_num_pre_rounds=2),
    "roberta": dict(max_length=128, block_size=16, sparse_block_size=16, sparsity_factor=2, sparsity_type="stride",
                    num_global_tokens=3, mask_first_token=False, pool_with_global=False, lsh_num_pre_rounds=0),
}


@dataclass
class Source:
    """A tiny checkpoint saved at `path`, with the in-memory model and tokenizer it was saved from."""

    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def _bert_source(path: Path) -> Source:
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), model_max_length=64)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=0, **TINY)
    return Source(path, BertForMaskedLM(config).eval(), tokenizer)


def _roberta_source(path: Path) -> Source:
    path.mkdir()
    # specials first, as in RoBERTa: <pad> = 1 is the padding_idx its position ids assume
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)], vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(path))
    tokenizer = RobertaTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"),
                                 mask_token=AddedToken("<mask>", lstrip=True, rstrip=False), model_max_length=64)
    config = RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=64 + 2, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2, **TINY)
    return Source(path, RobertaForMaskedLM(config).eval(), tokenizer)


@pytest.fixture(scope="module", autouse=True)
def help_process() -> Iterator[subprocess.Popen[str]]:
    """`python -m lsg.convert --help` as a real subprocess, started with the module's first test.

    Its import of transformers takes several seconds; running it in the background lets it overlap the
    in-process tests instead of adding to them (its test is the last of the module for that reason).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lsg.convert", "--help"], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield process
    if process.poll() is None:  # the help test was deselected: don't leave the process behind
        process.kill()
    process.communicate()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sources")
    built = {"bert": _bert_source(root / "bert"), "roberta": _roberta_source(root / "roberta")}
    for source in built.values():
        source.model.save_pretrained(source.path)
        source.tokenizer.save_pretrained(source.path)
    return built


def _flags(options: dict[str, Any]) -> list[str]:
    """CLI flags for `lsg.convert` keyword arguments (booleans as --name / --no-name)."""
    argv = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        argv += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return argv


def _batch(source: Source, length: int = 80) -> dict[str, torch.Tensor]:
    """Two rows of `length` tokens (> 2*bs, so the sparse part is used), the second one with padding."""
    words = WORDS * length
    encoded = source.tokenizer([" ".join(words[:length]), " ".join(words[:20])], padding="max_length",
                               truncation=True, max_length=length, return_tensors="pt")
    assert encoded["attention_mask"][1].sum() < length  # the second row really is padded
    return dict(encoded)


def _logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_round_trip_matches_in_memory_conversion(family: str, sources: dict[str, Source], tmp_path: Path) -> None:
    source, options = sources[family], CONVERSIONS[family]
    out = main(["--model", str(source.path), "--out", str(tmp_path / "lsg"), *_flags(options)])
    assert out == tmp_path / "lsg"

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == f"lsg_{family}"
    assert config["architectures"] == [f"LSG{type(source.model).__name__}"]
    expected = {**options, "adaptive": True}  # not given on the command line: the default is written
    assert {name: config[name] for name in LSG_FIELDS} == {name: expected[name] for name in LSG_FIELDS}
    assert config["max_position_embeddings"] == options["max_length"] + (2 if family == "roberta" else 0)
    assert AutoTokenizer.from_pretrained(out).model_max_length == options["max_length"]

    reference = lsg.convert(source.model, source.tokenizer, **options)
    batch = _batch(source)
    expected_logits = _logits(reference, batch)
    assert expected_logits.isfinite().all()
    for loaded in (lsg.load(out), AutoModelForMaskedLM.from_pretrained(out)):
        assert type(loaded) is type(reference)
        torch.testing.assert_close(_logits(loaded, batch), expected_logits, rtol=0, atol=0)


def test_sequence_classification_head_is_seeded(sources: dict[str, Source], tmp_path: Path) -> None:
    source = sources["bert"]
    argv = ["--model", str(source.path), "--architecture", "ForSequenceClassification", "--num-labels", "3",
            "--max-length", "128", "--block-size", "16", "--seed", "7"]
    out = main([*argv, "--out", str(tmp_path / "clf")])

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LSGBertForSequenceClassification"]
    model = lsg.load(out)
    assert type(model).__name__ == "LSGBertForSequenceClassification" and model.config.num_labels == 3
    batch = _batch(source)
    logits = _logits(model, batch)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(_logits(AutoModelForSequenceClassification.from_pretrained(out), batch), logits,
                               rtol=0, atol=0)
    # the new head (classifier, and the pooler a MaskedLM checkpoint lacks) comes from the CLI's --seed
    torch.manual_seed(7)
    reference = lsg.convert(BertForSequenceClassification.from_pretrained(source.path, num_labels=3),
                            source.tokenizer, max_length=128, block_size=16)
    torch.testing.assert_close(_logits(reference, batch), logits, rtol=0, atol=0)


def test_list_prints_the_supported_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) is None
    printed = capsys.readouterr().out
    assert all(name in printed for name in lsg.supported_architectures())
    assert "BertForPreTraining" in printed and "RobertaForSequenceClassification" in printed
    assert "bart: encoder-decoder (LSG encoder), positions learned, tiled (offset 2)" in printed
    assert "    BartForConditionalGeneration, " in printed  # the default head comes first


def test_existing_output_needs_overwrite(sources: dict[str, Source], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lsg"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    argv = ["--model", str(sources["roberta"].path), "--out", str(out), "--max-length", "128", "--block-size", "16"]

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "earlier work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lsg"]

    main([*argv, "--overwrite"])
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


@pytest.mark.parametrize(
    ("flags", "parameter"),
    [(["--block-size", "0"], "block_size"), (["--sparsity-factor", "3"], "sparsity_factor")],
    ids=["block-size-0", "sparsity-factor-3"],
)
def test_bad_values_fail_before_writing(flags: list[str], parameter: str, sources: dict[str, Source],
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lsg"
    with pytest.raises((ValueError, SystemExit)) as info:
        main(["--model", str(sources["bert"].path), "--out", str(out), *flags])
    message = f"{info.value} {capsys.readouterr().err}"  # a ValueError, or an argparse error on stderr
    assert parameter in message or "--" + parameter.replace("_", "-") in message
    assert list(tmp_path.iterdir()) == []


# The flags users' commands rely on, spelled as before the flags were generated from the settings dataclasses.
SETTINGS_FLAGS = [
    "--block-size", "--sparse-block-size", "--sparsity-factor", "--sparsity-type", "--num-global-tokens",
    "--mask-first-token", "--no-mask-first-token", "--pool-with-global", "--no-pool-with-global",
    "--lsh-num-pre-rounds", "--lsh-seed", "--adaptive", "--no-adaptive", "--random-global-init",
    "--no-random-global-init", "--global-positional-stride", "--use-token-ids", "--no-use-token-ids",
    "--pass-global-tokens-to-decoder", "--no-pass-global-tokens-to-decoder", "--lsg-decoder", "--no-lsg-decoder",
    "--seed",
]


def test_flags_are_generated_from_the_settings_fields() -> None:
    """Same spellings as before; each field's flag has its type, default, choices and docstring help."""
    parser = _parser()
    actions = {action.dest: action for action in parser._actions}
    names = {field.name for cls in (LSGSettings, ConversionSettings) for field in fields(cls)}
    generated = [flag for action in parser._actions if action.dest in names for flag in action.option_strings]
    assert generated == SETTINGS_FLAGS
    for cls in (LSGSettings, ConversionSettings):
        docs = field_docs(cls)
        for name, default in vars(cls()).items():
            assert actions[name].default == default and actions[name].help == docs[name], name
    assert actions["sparsity_type"].choices == lsg.SPARSITY_TYPES
    assert actions["block_size"].type is int and actions["global_positional_stride"].type is int
    parsed = parser.parse_args(["--no-pool-with-global", "--mask-first-token", "--block-size", "64"])
    assert (parsed.pool_with_global, parsed.mask_first_token, parsed.block_size) == (False, True, 64)


def test_docstring_entries_give_the_help_and_a_missing_one_is_refused() -> None:
    assert field_docs(LSGSettings)["sparse_block_size"].startswith("sbs, sparse keys taken on EACH side")
    assert field_docs(ConversionSettings)["pass_global_tokens_to_decoder"].endswith(
        "where cross-attention sees them (design §3.6); ignored by encoder-only families.")  # continuation joined

    @dataclass
    class Undocumented:
        """A settings class whose second field has no docstring entry.

        Args:
            width: documented.
        """

        width: int = 1
        depth: int = 2

    with pytest.raises(ValueError, match=r"Undocumented.depth has no entry"):
        add_flags(argparse.ArgumentParser(), Undocumented, "x")


def test_help_runs_as_a_module(help_process: subprocess.Popen[str]) -> None:
    stdout, stderr = help_process.communicate(timeout=120)
    assert help_process.returncode == 0, stderr
    assert "--max-length" in stdout
