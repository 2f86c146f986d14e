"""Paper Table 1: swap the attention of a pretrained MLM, no training, and score MLM at 1x and 8x its length.

    python -m tasks.table1 --scale smoke    # make table1 scale=smoke: offline, 2 CPU cores, < 30 min
    python -m tasks.table1 --scale paper    # make table1 scale=paper: roberta-base, hub corpus, GPU(s)

At smoke scale the base model is trained here first (`tasks.pretrain`, reused when present): by default the
real all-MiniLM-L6-v2 encoder cut to 128 positions under an MLM head trained on the Wikipedia extracts
(`--start scratch`: a small RoBERTa from random weights, written to `runs/table1/smoke-scratch`).

Every row starts from the same pretrained weights. Rows longer than the model's own length get its position
table tiled (the paper's "duplicated 8 times"); then the row's attention is put in: SDPA ("RoBERTa (full)"),
a Table 1 variant through `lsg.baselines.swap_attention`, transformers' Longformer/BigBird with the weights
copied, or `lsg.convert`. Attention sizes scale with the base length so that smoke-scale rows keep the
paper's proportions: at 512 the paper uses Longformer window 512, BigBird block 64, LSG 128/2, Linformer
k = 128; at 128 (smoke) these become 128, 16, 32/2 and 32.

Each (row, length) writes `runs/table1/<scale>/<row>-L<length>/metrics.json`, built and checked by the
pipeline's `tasks.report.build_record` (the same keys and metric names as a training run's: `bpc`,
`mlm_accuracy`), so an interrupted sweep resumes where it stopped. Then
`runs/table1/<scale>/table.md` puts ours and the paper's numbers side by side, in the paper's row order,
and `bpc_vs_length.png` plots BPC against length for every row.

MLM scoring (`tasks.mlm`): the evaluation texts are concatenated and cut into blocks of exactly the length
evaluated, 15% of the non-special tokens masked (80% <mask>, 10% random, 10% kept) with a fixed seed, so
every row sees the same masked positions at a given length. BPC = mean masked-token cross-entropy / ln 2
(bits per token, the paper's "BPC"); accuracy = fraction of masked tokens predicted exactly.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import yaml
from tqdm.auto import tqdm
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import lsg
from lsg import baselines
from lsg.atomic import write_json
from tasks.data import FILE_FORMATS, build_wiki_mlm
from tasks.hardware import DEVICES, resolve
from tasks.metrics import METRICS
from tasks.mlm import EVAL_MASK_SEED, masked_blocks, reduce_logits, reduced_scores
from tasks.pretrain import MINILM_MLM, STARTS, PretrainConfig, pretrain
from tasks.report import build_record, read_record

log = logging.getLogger(__name__)
PAPER_TABLE = Path(__file__).with_name("paper") / "table1.yaml"
TABLE_METRICS = ("bpc", "mlm_accuracy")  # the table's BPC and Acc columns, by their names in tasks.metrics
ORDER_CHECK = "order_check.json"  # the base model's word-order check, beside the rows' metrics


@dataclass(frozen=True)
class Scale:
    """Where the base model and the evaluation text come from, and the lengths scored."""

    name: str
    lengths: tuple[int, ...]  # first = the base model's own length; the 8x column is the paper's 4096
    eval_tokens: int  # evaluation text budget (tokens), cut into blocks of each length
    batch_size: int
    corpus: str  # "wiki" (shipped Wikipedia extracts) or a hub dataset id / local file for datasets.load_dataset
    corpus_split: str = "train"
    corpus_field: str = "text"

    @property
    def base_length(self) -> int:
        return self.lengths[0]

    @property
    def split(self) -> str:
        """The evaluation text's split, as the records name it."""
        return "validation+test" if self.corpus == "wiki" else self.corpus_split


SCALES = {
    "smoke": Scale("smoke", lengths=(128, 1024, 2048), eval_tokens=40_000, batch_size=8, corpus="wiki"),
    "paper": Scale("paper", lengths=(512, 4096), eval_tokens=2_000_000, batch_size=4,
                   corpus="wikimedia/wikipedia:20231101.en"),
}


def _own_length(model: PreTrainedModel) -> int:
    """Tokens the model reads without tiling (its position table, less the rows its family offsets)."""
    return model.config.max_position_embeddings - lsg.families.family_of(model.config).saved_position_offset


def _tiled(model: PreTrainedModel, length: int) -> PreTrainedModel:
    """The model reading `length` tokens: positions tiled, or a copy when it already reads that far."""
    return baselines.tile_model_positions(model, length) if length > _own_length(model) else copy.deepcopy(model)


def _swap(name: str, **params: Any) -> Callable[[PreTrainedModel, PreTrainedTokenizerBase, int], PreTrainedModel]:
    return lambda model, tokenizer, length: baselines.swap_attention(_tiled(model, length), name, **params)


def _lsg(selector: str, block: int) -> Callable[[PreTrainedModel, PreTrainedTokenizerBase, int], PreTrainedModel]:
    return lambda model, tokenizer, length: lsg.convert(
        model, tokenizer, max_length=length, block_size=block, sparse_block_size=block, sparsity_factor=2,
        sparsity_type=selector)


@dataclass(frozen=True)
class Row:
    label: str  # the paper's label at paper scale
    paper_label: str | None  # row of the paper's table it stands beside (None: not in the paper)
    build: Callable[[PreTrainedModel, PreTrainedTokenizerBase, int], PreTrainedModel]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_")


def rows_for(base_length: int) -> list[Row]:
    """Table 1's rows in the paper's order, attention sizes scaled to the base length (512 -> paper)."""
    k = base_length / 512
    window, bird, block, proj = int(512 * k), max(2, int(64 * k)), max(2, int(128 * k)), max(1, int(128 * k))
    lsg_rows = [(f"LSG-{name} ({block}/2)", f"LSG-{name} (128/2)", selector)
                for name, selector in (("Norm", "norm"), ("Stride", "stride"), ("BlockStride", "block_stride"),
                                       ("Pooling", "pooling"), ("LSH", "lsh"))]
    return [
        Row("RoBERTa (full)", "RoBERTa (full)", _swap("full")),
        Row("Linear Attn.", "Linear Attn.", _swap("linear")),
        Row("Efficient Attn.", "Efficient Attn.", _swap("efficient")),
        Row("Performer", "Performer", _swap("performer")),
        Row(f"Linformer ({proj} proj.)", "Linformer (128 proj.)", _swap("linformer", projection_dim=proj)),
        Row("Reformer", "Reformer", _swap("reformer", chunk_size=max(2, int(64 * k)))),
        Row(f"Longformer ({window})", "Longformer (512)",
            lambda model, tokenizer, length: baselines.to_longformer(model, max_length=length,
                                                                     attention_window=window)),
        Row(f"Big Bird ({bird})", "Big Bird (64)",
            lambda model, tokenizer, length: baselines.to_bigbird(model, max_length=length, block_size=bird)),
        *[Row(label, paper, _lsg(selector, block)) for label, paper, selector in lsg_rows],
        Row(f"Local only ({block})", None, _swap("local", block_size=block)),
    ]


def evaluation_texts(scale: Scale) -> list[str]:
    """Held-out text, about `scale.eval_tokens` words: the Wikipedia extracts' validation+test splits (smoke),
    else the first documents of a local json/csv/parquet file or of a hub corpus stream (the paper used a
    random sample of Wikipedia + BookCorpus + CC-News that is not published; English Wikipedia stands in)."""
    if scale.corpus == "wiki":
        splits = build_wiki_mlm()
        source = iter(list(splits["validation"]["text"]) + list(splits["test"]["text"]))
    elif Path(scale.corpus).is_file():
        suffix = Path(scale.corpus).suffix
        if suffix not in FILE_FORMATS:
            raise ValueError(f"--corpus={scale.corpus!r}: a local corpus must end in one of {sorted(FILE_FORMATS)}")
        data = datasets.load_dataset(FILE_FORMATS[suffix], data_files=scale.corpus, split="train", streaming=True)
        source = (record[scale.corpus_field] for record in data)
    else:
        name, _, config = scale.corpus.partition(":")
        try:
            data = datasets.load_dataset(name, config or None, split=scale.corpus_split, streaming=True)
        except Exception as error:  # hub errors come in many types; the message is what matters
            raise RuntimeError(f"could not load the Table 1 corpus {scale.corpus!r} ({type(error).__name__}: "
                               f"{str(error)[:200]}); pass --corpus with a local json/csv/parquet file") from error
        source = (record[scale.corpus_field] for record in data)
    texts, words = [], 0
    for text in source:
        texts.append(text)
        words += len(text.split())
        if words >= scale.eval_tokens:
            break
    return texts


def shuffled_context(data: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """The same masked blocks with each block's visible tokens (not scored, not special) permuted in place.

    A model whose predictions use word order scores worse on these; a bag-of-words model scores the same, and
    then tiling its positions (the 8x column) cannot hurt it either. Scored positions and specials stay put.
    """
    ids = data["input_ids"].clone()
    generator = torch.Generator().manual_seed(seed)
    special = torch.tensor(tokenizer.all_special_ids)
    for row, labels in zip(ids, data["labels"], strict=True):
        visible = ((labels == -100) & ~torch.isin(row, special)).nonzero().squeeze(1)
        row[visible] = row[visible[torch.randperm(len(visible), generator=generator)]]
    return {**data, "input_ids": ids}


def order_check(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: dict[str, torch.Tensor],
                batch_size: int) -> dict[str, float]:
    """Base-model BPC on masked blocks of its own length, as is and with the context shuffled."""
    return {"length": int(data["input_ids"].shape[1]),
            "bpc": score(model, data, batch_size, "base model")["bpc"],
            "bpc_context_shuffled": score(model, shuffled_context(data, tokenizer), batch_size,
                                          "base model, context shuffled")["bpc"]}


@torch.no_grad()
def score(model: PreTrainedModel, data: dict[str, torch.Tensor], batch_size: int, desc: str) -> dict[str, float]:
    """BPC and accuracy over the masked tokens; logits are reduced per batch (a 4096 x 50k slab is 0.8 GB)."""
    reduced, labels = [], []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(data["input_ids"]), batch_size), desc=desc, leave=False):
        batch = {k: v[start:start + batch_size].to(device) for k, v in data.items() if k != "labels"}
        target = data["labels"][start:start + batch_size].to(device)
        reduced.append(reduce_logits(model(**batch).logits, target).cpu())
        labels.append(target.cpu())
    return reduced_scores(torch.cat(reduced).numpy(), torch.cat(labels).numpy())


def base_model(scale: Scale, out: Path, checkpoint: str | None, start: str = "minilm",
               device: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """roberta-base (paper scale), --checkpoint, or at smoke scale the MLM trained here from `start`
    (`tasks.pretrain`: MiniLM's encoder with a trained head, or a small RoBERTa from scratch), on `device`
    ("auto": CUDA when present; every row's converter keeps the base model's device)."""
    if checkpoint is None and scale.name == "smoke":
        preset = MINILM_MLM if start == "minilm" else PretrainConfig(start=start)
        config = dataclasses.replace(preset, length=scale.base_length)
        checkpoint = str(pretrain(out / f"mlm-{start}-{scale.base_length}", config))
    checkpoint = checkpoint or "FacebookAI/roberta-base"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)
    device, _ = resolve(device, key="table1")
    return AutoModelForMaskedLM.from_pretrained(checkpoint, trust_remote_code=False).to(device).eval(), tokenizer


def score_cell(row: Row, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: dict[str, torch.Tensor],
               scale: Scale, length: int, path: Path, checkpoint: str) -> dict[str, Any]:
    """Build `row`'s model at `length`, score it on `data`, and write its metrics.json record to `path`."""
    tokenizer.model_max_length = length
    started = time.perf_counter()
    candidate = row.build(model, tokenizer, length).eval()
    tick = time.perf_counter()
    metrics = score(candidate, data, scale.batch_size, f"{row.label} @ {length}")
    eval_seconds = time.perf_counter() - tick
    record = build_record(
        experiment=f"table1_{scale.name}", task="mlm", model=row.label, attention=row.slug, checkpoint=checkpoint,
        max_length=length, seed=EVAL_MASK_SEED, split=scale.split, metrics=metrics, n_samples=len(data["input_ids"]),
        run_dir=str(path.parent), device=next(candidate.parameters()).device.type,
        trainable_parameters=0, parameters=sum(p.numel() for p in candidate.parameters()),  # no training here
        train_seconds=0.0, train_tokens=0, eval_seconds=eval_seconds, eval_tokens=data["input_ids"].numel(),
        wall_seconds=time.perf_counter() - started,  # the row's conversion and its scoring
    )
    write_json(path, record)
    log.info("%s @ %d: BPC %.3f, accuracy %.3f", row.label, length, metrics["bpc"], metrics["mlm_accuracy"])
    return record


def run(scale: Scale, out: Path, *, checkpoint: str | None = None, start: str = "minilm", force: bool = False,
        rows: list[str] | None = None, device: str = "auto") -> list[dict[str, Any]]:
    """Score every row at every length, writing one metrics.json each (existing ones are kept unless force)."""
    model, tokenizer = base_model(scale, out, checkpoint, start, device)
    own = _own_length(model)
    if own != scale.base_length:
        log.warning("the base model reads %d tokens, the scale assumes %d", own, scale.base_length)
    selected = [row for row in rows_for(scale.base_length) if not rows or row.slug in rows]
    texts = evaluation_texts(scale)
    # The base-length blocks are masked once: the check and that length's rows score the same masked tokens.
    base_data = None
    if (out / ORDER_CHECK).exists():
        check = json.loads((out / ORDER_CHECK).read_text())
    else:
        base_data = masked_blocks(texts, tokenizer, scale.base_length)
        check = order_check(model, tokenizer, base_data, scale.batch_size)
        write_json(out / ORDER_CHECK, check)
    log.info("base model at %d: BPC %.3f, with the context shuffled %.3f", check["length"], check["bpc"],
             check["bpc_context_shuffled"])
    records = []
    for length in scale.lengths:
        data = base_data if length == scale.base_length else None
        for row in selected:
            path = out / f"{row.slug}-L{length}" / "metrics.json"
            done = None if force else read_record(path)
            if done is not None:
                records.append(done)
                continue
            data = data if data is not None else masked_blocks(texts, tokenizer, length)
            records.append(score_cell(row, model, tokenizer, data, scale, length, path,
                                      checkpoint or model.name_or_path))
    return records


def paper_numbers() -> dict[str, dict[str, dict[str, float]]]:
    """The paper's Table 1 (this project's copy of the numbers): label -> metric -> {"512", "4096"}."""
    return yaml.safe_load(PAPER_TABLE.read_text())["rows"]


def _described(name: str) -> str:
    """A metric's unit and direction, as the table and the plot print them: "bits per masked token, lower is better"."""
    metric = METRICS.get(name)
    return f"{metric.unit}, {'higher' if metric.higher_is_better else 'lower'} is better"


def table_markdown(records: list[dict[str, Any]], scale: Scale, check: dict[str, float] | None = None) -> str:
    """Ours (every length) beside the paper's (512 and 4096), in the paper's row order; `check` is the
    base model's `order_check`, printed under the table because it says how to read the 8x column."""
    paper = paper_numbers()
    ours = {(r["model"], r["max_length"]): r["metrics"] for r in records}
    short, long = scale.lengths[0], scale.lengths[1]
    header = ["attention"] + [f"ours {n} {m}" for n in scale.lengths for m in ("BPC", "Acc")]
    header += ["paper 512 BPC", "paper 512 Acc", "paper 4096 BPC", "paper 4096 Acc"]
    base = records[0]["checkpoint"] if records else "?"
    lines = [f"Table 1 at {scale.name} scale, base model `{base}`: ours at {short} (its length), {long} (8x) and the "
             f"other lengths, beside the paper's 512 and 4096 (RoBERTa-base). BPC = {_described('bpc')}; "
             "Acc = masked-token accuracy.", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows_for(scale.base_length):
        cells = [row.label]
        for length in scale.lengths:
            metrics = ours.get((row.label, length))
            cells += [f"{metrics[m]:.3f}" for m in TABLE_METRICS] if metrics else ["", ""]
        reference = paper.get(row.paper_label or "")
        cells += ([f"{reference[m][n]:.3f}" for n in ("512", "4096") for m in TABLE_METRICS]
                  if reference else ["not in paper"] * 4)
        lines.append("| " + " | ".join(cells) + " |")
    if check:
        lines += ["", f"Word-order check of the base model at {check['length']} tokens: BPC {check['bpc']:.3f} as is, "
                  f"{check['bpc_context_shuffled']:.3f} with the visible context shuffled within each block "
                  f"({check['bpc_context_shuffled'] - check['bpc']:+.3f}). A model that ignores word order loses "
                  "nothing there, and then duplicated positions cannot hurt it either."]
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """BPC against length, one line per attention (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, label in enumerate(dict.fromkeys(r["model"] for r in records)):
        points = sorted((r["max_length"], r["metrics"]["bpc"]) for r in records if r["model"] == label)
        style = "-" if label.startswith("LSG") else "--"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=label,
                color=plt.cm.tab20(index % 20))  # 14 rows: the default 10-colour cycle would repeat
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluated length (tokens)")
    ax.set_ylabel(f"BPC ({_described('bpc')})")
    ax.set_title("MLM without training after swapping the attention (Table 1)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.table1", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    p.add_argument("--out", type=Path, default=None, help="default: runs/table1/<scale>")
    p.add_argument("--checkpoint", default=None, help="base MLM (hub id or local dir); default per scale")
    p.add_argument("--start", choices=STARTS, default="minilm",
                   help="smoke scale without --checkpoint: the MLM trained here starts from MiniLM or from scratch")
    p.add_argument("--corpus", default=None, help="hub dataset id[:config] or local json/csv/parquet file")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="default per scale (first = base length)")
    p.add_argument("--rows", nargs="+", default=None, help="row slugs to run (default: all)")
    p.add_argument("--force", action="store_true", help="rerun rows whose metrics.json exists")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when present, else CPU")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = _parser().parse_args(argv)
    scale = SCALES[args.scale]
    if args.lengths:
        if any(n < 1 for n in args.lengths):
            raise ValueError(f"--lengths={args.lengths}: every length must be >= 1")
        scale = Scale(**{**scale.__dict__, "lengths": tuple(args.lengths)})
    if args.corpus:
        scale = Scale(**{**scale.__dict__, "corpus": args.corpus})
    known = {row.slug for row in rows_for(scale.base_length)}
    if args.rows and not set(args.rows) <= known:
        raise ValueError(f"--rows {sorted(set(args.rows) - known)} unknown; rows: {sorted(known)}")
    default = scale.name if args.start == "minilm" or args.checkpoint else f"{scale.name}-{args.start}"
    out = args.out or Path("runs") / "table1" / default
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    records = run(scale, out, checkpoint=args.checkpoint, start=args.start, force=args.force, rows=args.rows,
                  device=args.device)
    table = table_markdown(records, scale, json.loads((out / ORDER_CHECK).read_text()))
    (out / "table.md").write_text(table)
    plot(records, out / "bpc_vs_length.png")
    print(table)
    print(f"wrote {out / 'table.md'} and {out / 'bpc_vs_length.png'}")
    return out


if __name__ == "__main__":
    main()
