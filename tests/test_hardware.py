"""Automatic device and precision (tasks/hardware.py): CUDA when present, bf16 where supported, explicit values
win; the pipeline's default trainer and Table 1's base model use it."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from lsg.assets import minilm_dir
from tasks import table1
from tasks.config import to_run_config
from tasks.hardware import resolve

CONF = Path(__file__).resolve().parents[1] / "conf"


def tiny_mlm(path: Path) -> None:
    """A one-layer BERT MLM with MiniLM's tokenizer, saved to `path` (a --checkpoint for Table 1)."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine with or without CUDA (and bf16 support)."""
    def set_up(cuda: bool, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    return set_up


@pytest.mark.parametrize(("cuda", "bf16", "expected"), [
    (True, True, ("cuda", "bf16")), (True, False, ("cuda", "fp32")), (False, False, ("cpu", "fp32"))])
def test_auto_picks_cuda_and_bf16_where_present(machine, cuda, bf16, expected):
    machine(cuda, bf16)
    assert resolve("auto", "auto") == expected


def test_explicit_values_win(machine):
    machine(True)
    assert resolve("cpu", "auto") == ("cpu", "fp32")
    assert resolve("auto", "fp16") == ("cuda", "fp16")


def test_impossible_requests_are_named(machine):
    machine(False)
    with pytest.raises(ValueError, match=r"trainer.device=cuda but torch sees no CUDA device"):
        resolve("cuda", "auto")
    with pytest.raises(ValueError, match=r"trainer.precision=fp16 needs trainer.device=cuda"):
        resolve("auto", "fp16")
    with pytest.raises(ValueError, match=r"trainer.device='tpu' is not supported"):
        resolve("tpu", "auto")


def test_the_default_trainer_is_auto_and_resolves_when_the_run_starts(machine):
    from tasks.train import with_hardware

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = to_run_config(compose(config_name="config", overrides=["model=lsg_norm", "task=bbc_topic"]))
        pinned = to_run_config(compose(config_name="config", overrides=["trainer=cpu"]))
    GlobalHydra.instance().clear()
    assert (cfg.trainer.name, cfg.trainer.device, cfg.trainer.precision) == ("auto", "auto", "auto")
    machine(True)
    assert (with_hardware(cfg).trainer.device, with_hardware(cfg).trainer.precision) == ("cuda", "bf16")
    assert with_hardware(pinned).trainer.device == "cpu"


def test_table1_moves_the_base_model_to_cuda(machine, monkeypatch, tmp_path):
    """Defect: at paper scale the base model (and so every converted row) stayed on the CPU of a GPU machine."""
    tiny_mlm(tmp_path)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: moved.append(args) or self)
    machine(True)
    table1.base_model(table1.SCALES["paper"], tmp_path, str(tmp_path))
    assert moved == [("cuda",)]
    moved.clear()
    table1.base_model(table1.SCALES["paper"], tmp_path, str(tmp_path), device="cpu")
    assert moved == [("cpu",)]


@pytest.mark.gpu
def test_table1_base_model_really_lands_on_cuda(tmp_path):
    tiny_mlm(tmp_path)
    model, _ = table1.base_model(table1.SCALES["paper"], tmp_path, str(tmp_path))
    assert next(model.parameters()).device.type == "cuda"
