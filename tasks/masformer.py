"""MASFormer experiment: does full attention in a few layers recover full-attention quality at a fraction of the cost?

    python -m tasks.masformer --scale smoke   # make masformer scale=smoke: offline, 2 CPU cores, < 30 min
    python -m tasks.masformer --scale paper   # make masformer scale=paper: the same, larger (GPU advised)

For each fraction of full-attention layers (0, 1/6, 1/3, 1; `FRACTIONS`) one model is trained with the same
budget (same data, steps, learning rates, seed) under the plan `lsg.plans.masformer_plan` gives: the full
layers at the bottom, LSG in the rest (design §3.9). Two tasks:

* `bbc_longdoc` (`tasks.data`): the real all-MiniLM-L6-v2 (6 layers), converted to LSG-Norm at 4,096 tokens and
  fine-tuned to classify documents of 1k-2.3k tokens whose first 512 tokens carry no information about the
  label (at smoke scale, as in `make run`, the embeddings and the lowest layers stay frozen: the plan still
  decides how they attend). Quality: test accuracy.
* A small causal LM (GPT-2 shape, 6 layers, bytes as tokens) trained from random weights on the English
  Wikipedia extracts shipped offline, converted to causal LSG before training. Quality: test bits per byte.

Cost per plan: the attention-core FLOPs of one sequence (`lsg.plans.attention_flops`, relative to all-full) and
the measured seconds per training step. Each run writes `runs/masformer/<scale>/<task>-full<k>.json` (an
interrupted sweep resumes; a saved run of another budget is refused, `--force` reruns it); then `table.md`,
`results.json` and `masformer.png` (quality vs attention cost).

The MASFormer paper's own setting (a 1.3B decoder at 8k tokens, continual training) has no offline checkpoint
or corpus here; paper scale only enlarges the budget of the two tasks above.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    get_linear_schedule_with_warmup,
)

import lsg
from lsg.assets import minilm_dir
from lsg.atomic import staged_file, write_json
from lsg.plans import attention_flops, masformer_plan
from lsg.settings import LSGSettings
from tasks.data import build_bbc_longdoc, build_wiki_mlm
from tasks.run_identity import RunDirConflictError, differences, flatten

logger = logging.getLogger(__name__)

FRACTIONS: tuple[float, ...] = (0.0, 1 / 6, 1 / 3, 1.0)
NEWLINE = 10  # byte id of "\n": the LM's document separator and the token its global prefix starts from


@dataclass(frozen=True)
class Scale:
    """The budget of one sweep; every plan gets exactly this."""

    # bbc_longdoc with MiniLM
    n_train: int
    n_test: int
    max_article_words: int  # bbc_longdoc's document size (tasks.data.build_bbc_longdoc)
    freeze_layers: int  # the embeddings (not the global rows) and this many lowest layers are not trained
    epochs: int
    accumulation: int  # documents per update (one document per step: no padding between 1.3k-2.3k tokens)
    learning_rate: float
    head_learning_rate: float  # the fresh classifier and global rows move further
    classifier: LSGSettings
    # byte-level causal LM on Wikipedia
    lm_layers: int
    lm_width: int
    lm_heads: int
    lm_length: int
    lm_batch: int
    lm_steps: int
    lm_learning_rate: float
    lm_eval_blocks: int
    lm: LSGSettings
    seed: int = 0


SCALES: dict[str, Scale] = {
    # 2 CPU cores, idle: about 3 min per plan for the classifier and 2 for the LM, under 20 min in all.
    "smoke": Scale(
        n_train=40,
        n_test=40,
        max_article_words=300,
        freeze_layers=4,
        epochs=2,
        accumulation=4,
        learning_rate=1e-4,
        head_learning_rate=5e-3,
        classifier=LSGSettings(block_size=128, sparse_block_size=128, sparsity_factor=4),
        lm_layers=6,
        lm_width=64,
        lm_heads=4,
        lm_length=512,
        lm_batch=4,
        lm_steps=600,
        lm_learning_rate=3e-3,
        lm_eval_blocks=32,
        lm=LSGSettings(block_size=16, sparse_block_size=16, sparsity_factor=4, sparsity_type="pooling"),
    ),
    "paper": Scale(
        n_train=200,
        n_test=100,
        max_article_words=400,
        freeze_layers=0,
        epochs=3,
        accumulation=8,
        learning_rate=1e-4,
        head_learning_rate=2e-3,
        classifier=LSGSettings(block_size=128, sparse_block_size=128, sparsity_factor=4),
        lm_layers=12,
        lm_width=512,
        lm_heads=8,
        lm_length=4096,
        lm_batch=8,
        lm_steps=5000,
        lm_learning_rate=6e-4,
        lm_eval_blocks=200,
        lm=LSGSettings(block_size=128, sparse_block_size=128, sparsity_factor=4, sparsity_type="pooling"),
    ),
}


def plans_for(num_layers: int) -> list[list[str]]:
    """One plan per fraction of `FRACTIONS`: round(fraction * layers) full layers at the bottom."""
    return [masformer_plan(num_layers, round(fraction * num_layers)) for fraction in FRACTIONS]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- bbc_longdoc ---------------------------------------------------------------------------------------------


def run_classifier(scale: Scale, plan: list[str]) -> dict[str, Any]:
    """Fine-tune MiniLM converted to LSG under `plan` on bbc_longdoc; test accuracy and seconds per step."""
    source_dir = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    data = build_bbc_longdoc(
        n_train=scale.n_train,
        n_validation=1,
        n_test=scale.n_test,
        max_article_words=scale.max_article_words,
        seed=scale.seed,
    )
    torch.manual_seed(scale.seed)  # the same classifier head for every plan
    source = BertForSequenceClassification.from_pretrained(source_dir, num_labels=5)
    model = lsg.convert(source, tokenizer, scale.classifier, max_length=4096, layers=plan).to(_device())
    encode = lambda rows: tokenizer(rows["text"], truncation=True, max_length=4096)  # noqa: E731
    train, test = (data[split].map(encode, batched=True) for split in ("train", "test"))
    frozen = (
        "bert.embeddings.word",
        "bert.embeddings.position",
        "bert.embeddings.token_type",
        "bert.embeddings.LayerNorm",
        *(f"bert.encoder.layer.{i}." for i in range(scale.freeze_layers)),
    )
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(frozen))
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in trained if n.startswith(("classifier", "bert.pooler")) or "global" in n]
    body = [p for n, p in trained if not (n.startswith(("classifier", "bert.pooler")) or "global" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": scale.learning_rate}, {"params": head, "lr": scale.head_learning_rate}]
    )
    # As the Trainer of `make run` and the Table 2 smoke: the rate decays linearly to 0, gradients are clipped to
    # norm 1 (the fresh head moves at a large rate).
    schedule = get_linear_schedule_with_warmup(optimizer, 0, max(1, scale.epochs * len(train) // scale.accumulation))
    trained_parameters = [p for _, p in trained]
    generator = torch.Generator().manual_seed(scale.seed)
    steps, seconds = 0, 0.0
    model.train()
    for epoch in range(scale.epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        for index in tqdm(order, desc=f"bbc_longdoc {plan.count('full')} full, epoch {epoch + 1}", leave=False):
            row = train[index]
            started = time.perf_counter()
            ids = torch.tensor([row["input_ids"]], device=model.device)
            loss = model(input_ids=ids, labels=torch.tensor([row["label"]], device=model.device)).loss
            (loss / scale.accumulation).backward()
            steps += 1
            if steps % scale.accumulation == 0:
                torch.nn.utils.clip_grad_norm_(trained_parameters, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            seconds += time.perf_counter() - started
    model.eval()
    correct, lengths = 0, []
    with torch.no_grad():
        for row in tqdm(test, desc="bbc_longdoc test", leave=False):
            ids = torch.tensor([row["input_ids"]], device=model.device)
            correct += int(model(input_ids=ids).logits.argmax(-1).item() == row["label"])
            lengths.append(len(row["input_ids"]))
    return {
        "accuracy": correct / len(test),
        "seconds_per_step": seconds / steps,
        "tokens": round(sum(lengths) / len(lengths)),
        "num_layers": len(plan),
        "heads": model.config.num_attention_heads,
        "head_dim": model.config.hidden_size // model.config.num_attention_heads,
    }


# --- byte-level causal LM ------------------------------------------------------------------------------------


def wiki_bytes(split: str) -> torch.Tensor:
    """The Wikipedia extracts of a split as one byte sequence, documents separated by a blank line."""
    texts = list(build_wiki_mlm()[split]["text"])
    return torch.tensor(list("\n\n".join(texts).encode("utf-8")), dtype=torch.long)


def run_language_model(scale: Scale, plan: list[str]) -> dict[str, Any]:
    """Train a small GPT-2 (bytes as tokens) from random weights as causal LSG under `plan`; test bits per byte."""
    torch.manual_seed(scale.seed)  # the same initial weights for every plan
    config = GPT2Config(
        vocab_size=256,
        n_positions=scale.lm_length,
        n_embd=scale.lm_width,
        n_layer=scale.lm_layers,
        n_head=scale.lm_heads,
        bos_token_id=NEWLINE,
        eos_token_id=NEWLINE,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    source = GPT2LMHeadModel(config)
    model = lsg.convert(source, settings=scale.lm, max_length=scale.lm_length, bos_token_id=NEWLINE, layers=plan).to(
        _device()
    )
    train, test = wiki_bytes("train"), wiki_bytes("test")
    generator = torch.Generator().manual_seed(scale.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=scale.lm_learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, scale.lm_steps)
    seconds = 0.0
    model.train()
    for _ in tqdm(range(scale.lm_steps), desc=f"wiki LM {plan.count('full')} full", leave=False):
        starts = torch.randint(0, len(train) - scale.lm_length, (scale.lm_batch,), generator=generator)
        batch = torch.stack([train[s : s + scale.lm_length] for s in starts.tolist()]).to(model.device)
        started = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        seconds += time.perf_counter() - started
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():  # consecutive blocks from the start of the test text: every plan scores the same bytes
        for block in range(scale.lm_eval_blocks):
            ids = test[block * scale.lm_length : (block + 1) * scale.lm_length][None].to(model.device)
            logits = model(input_ids=ids).logits[0, :-1]
            total += F.cross_entropy(logits.float(), ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return {
        "bits_per_byte": total / count / math.log(2),
        "seconds_per_step": seconds / scale.lm_steps,
        "tokens": scale.lm_length,
        "num_layers": len(plan),
        "heads": scale.lm_heads,
        "head_dim": scale.lm_width // scale.lm_heads,
    }


TASKS = {
    "bbc_longdoc": (run_classifier, "accuracy", lambda scale: scale.classifier),
    "wiki_lm": (run_language_model, "bits_per_byte", lambda scale: scale.lm),
}
NUM_LAYERS = {"bbc_longdoc": lambda scale: 6, "wiki_lm": lambda scale: scale.lm_layers}  # MiniLM has 6


def sweep(scale: Scale, out: Path, tasks: tuple[str, ...] = tuple(TASKS), force: bool = False
          ) -> list[dict[str, Any]]:
    """Every (task, plan) run, each saved as it finishes and skipped when already there; with its attention cost.

    A saved run is reused only if it was trained at the same `scale`: one of another budget raises
    `RunDirConflictError` naming the differing settings (`force` reruns it instead).
    """
    settings = json.loads(json.dumps(dataclasses.asdict(scale)))  # as stored: tuples become lists
    rows = []
    for task in tasks:
        run, _, settings_of = TASKS[task]
        for plan in plans_for(NUM_LAYERS[task](scale)):
            full = plan.count("full")
            path = out / f"{task}-full{full}.json"
            if path.exists() and not force:
                saved = json.loads(path.read_text(encoding="utf-8"))
                changed = differences(flatten(saved.get("scale", {})), flatten(settings))
                if changed:
                    raise RunDirConflictError(f"{path} was trained at other settings: " + "; ".join(changed)
                                              + ". Rerun with --force, or choose another --out")
                rows.append(saved)
                continue
            logger.info("masformer: %s with %d of %d layers full", task, full, len(plan))
            result = run(scale, plan)
            cost = {
                kind: attention_flops(
                    kind_plan,
                    len(plan),
                    result["tokens"],
                    settings_of(scale),
                    heads=result["heads"],
                    head_dim=result["head_dim"],
                )
                for kind, kind_plan in (("plan", plan), ("full", ["full"] * len(plan)))
            }
            row = {
                "task": task,
                "full_layers": full,
                "fraction": full / len(plan),
                "plan": plan,
                **result,
                "attention_gflops": cost["plan"] / 1e9,
                "attention_cost": cost["plan"] / cost["full"],
                "scale": settings,
            }
            write_json(path, row)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], scale_name: str) -> str:
    """Markdown: one line per (task, plan), quality beside cost."""
    lines = [
        f"# MASFormer plans ({scale_name} scale): quality vs cost at one training budget",
        "",
        "| task | full layers | quality | attention FLOPs (vs all full) | s / train step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        _, metric, _ = TASKS[row["task"]]
        lines.append(
            f"| {row['task']} | {row['full_layers']} / {row['num_layers']} | {metric} "
            f"{row[metric]:.3f} | {row['attention_gflops']:.2f} G ({row['attention_cost']:.2f}) | "
            f"{row['seconds_per_step']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Quality against relative attention cost, one panel per task (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        _, metric, _ = TASKS[task]
        points = sorted(
            (row["attention_cost"], row[metric], row["full_layers"], row["num_layers"])
            for row in rows
            if row["task"] == task
        )
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        for cost, value, full, layers in points:
            axis.annotate(f"{full}/{layers} full", (cost, value), textcoords="offset points", xytext=(4, 4))
        axis.set_xlabel("attention FLOPs relative to all-full")
        axis.set_ylabel(metric + (" (higher is better)" if metric == "accuracy" else " (lower is better)"))
        axis.set_title(task)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with staged_file(path) as staging:
        figure.savefig(staging, format="png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m tasks.masformer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    parser.add_argument("--out", type=Path, default=Path("runs/masformer"))
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--force", action="store_true", help="rerun the plans already saved under --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out / args.scale
    scale = SCALES[args.scale]
    rows = sweep(scale, out, tuple(args.tasks), force=args.force)
    write_json(out / "results.json", {"scale": dataclasses.asdict(scale), "runs": rows})
    report = table(rows, args.scale)
    with staged_file(out / "table.md") as staging:
        staging.write_text(report, encoding="utf-8")
    plot(rows, out / "masformer.png")
    print(report)
    return out


if __name__ == "__main__":
    main()
