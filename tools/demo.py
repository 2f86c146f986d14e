"""`python -m tools.demo` (`make demo`): the real MiniLM checkpoint reads a 4,096-token BBC article.

Converts all-MiniLM-L6-v2 (512 positions) to LSG attention (paper §3, design §2), runs it on the longest
BBC News article, and prints a short report that can be checked by eye:

* forward wall time at max_length, and the output shape;
* peak activation memory (`lsg.memory.PeakMemory`) at max_length/4, /2 and max_length: LSG is linear
  in the length (design §4), so each doubling should cost about x2, not the x4 of dense attention;
* invariant I3 (`lsg.invariants`): with the global keys hidden and pool_with_global=False, the converted
  model gives the original's outputs (max |diff| a few 1e-6: float32 rounding);
* how close default LSG stays to the original: cosine of mean-pooled sentence embeddings.

The same report goes to runs/demo/report.json. Takes about half a minute on 2 CPU cores, offline.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import lsg
from lsg.assets import bbc_articles, minilm_dir
from lsg.atomic import write_json
from lsg.convert.flags import add_flags, from_flags
from lsg.invariants import embedding_cosines, tokens_only_max_diff
from lsg.memory import PeakMemory

INVARIANT_TOKENS = 256  # = 2 * block_size by default: the short rule, where I3 holds
COSINE_TEXTS = 50
COSINE_MAX_TOKENS = 256


def longest_article(articles: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> tuple[dict[str, str], int]:
    """The article whose body has the most tokens (special tokens included), and that count."""
    # verbose=False: counting lengths past model_max_length is the point here, not a mistake to warn about
    lengths = [len(ids) for ids in tokenizer([a["text"] for a in articles], verbose=False)["input_ids"]]
    best = max(range(len(articles)), key=lambda i: (lengths[i], articles[i]["id"]))
    return articles[best], lengths[best]


def lead_texts(articles: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, count: int,
               max_tokens: int) -> list[str]:
    """`count` article leads, from articles spread evenly over the corpus (so every topic appears).

    A lead is as many whole opening paragraphs as fit in `max_tokens` (special tokens included); an
    article whose first paragraph alone is too long is skipped.
    """
    step = len(articles) / count
    texts = []
    for article in (articles[int(i * step)] for i in range(count)):
        lead = ""
        for paragraph in article["text"].split("\n\n"):
            candidate = f"{lead}\n\n{paragraph.strip()}" if lead else paragraph.strip()
            if len(tokenizer(candidate, verbose=False)["input_ids"]) > max_tokens:
                break
            lead = candidate
        if lead:
            texts.append(lead)
    return texts


def peak_memory(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str,
                lengths: list[int]) -> dict[int, int]:
    """Peak bytes of the tensors a no-grad forward creates, for `text` cut to each length in tokens."""
    peaks = {}
    for length in lengths:
        batch = tokenizer(text, truncation=True, max_length=length, return_tensors="pt")
        with torch.no_grad(), PeakMemory() as memory:
            model(**batch)
        peaks[length] = memory.peak_bytes
    return peaks


def format_report(report: dict[str, Any]) -> str:
    """The human-readable lines of the report (the JSON holds the same numbers, unrounded)."""
    model, settings, article = report["model"], report["settings"], report["article"]
    forward, memory, invariant, cosine = report["forward"], report["memory"], report["invariant"], report["cosine"]
    mb = {int(n): b / 2**20 for n, b in memory["peak_bytes"].items()}
    lengths = sorted(mb)
    steps = "  ".join(
        f"{n}: {mb[n]:.1f} MiB" + (f" (x{mb[n] / mb[lengths[i - 1]]:.2f})" if i else "")
        for i, n in enumerate(lengths)
    )
    knobs = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "keys_per_query")
    return "\n".join([
        f"model      {model['path']}",
        f"           {model['class']}: {model['layers']} layers, hidden {model['hidden_size']}, "
        f"{model['heads']} heads, {model['parameters'] / 1e6:.1f} M parameters",
        f"settings   {knobs}; {settings['keys_per_query']} keys per token query",
        f"article    {article['id']} \"{article['title']}\": {article['tokens']} tokens, "
        f"cut to {article['input_tokens']}",
        f"forward    {forward['seconds']:.2f} s for {article['input_tokens']} tokens "
        f"({forward['tokens_per_second']:.0f} tokens/s), output {tuple(forward['output_shape'])}, "
        f"finite: {forward['finite']}",
        f"memory     peak of activations, no_grad: {steps}  (dense attention: x4 per doubling)",
        f"invariant  I3, pool_with_global=False + global keys hidden, {invariant['tokens']}-token prefix: "
        f"max |LSG - original| = {invariant['max_abs_diff']:.1e}",
        f"cosine     LSG vs original, mean-pooled embeddings of {cosine['texts']} BBC leads "
        f"(<= {cosine['max_tokens']} tokens, mean {cosine['mean_tokens']:.0f}): "
        f"mean {cosine['mean']:.4f}, min {cosine['min']:.4f}",
        f"total      {report['seconds']:.1f} s",
    ])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description="Convert the real MiniLM checkpoint to LSG and run it on the longest BBC News article.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", type=Path, help="encoder + tokenizer directory (BERT or RoBERTa); if omitted, the "
                   "MiniLM asset ($LSG_MINILM_DIR overrides it)")
    p.add_argument("--out", type=Path, default=Path("runs/demo/report.json"), help="JSON report path")
    p.add_argument("--max-length", type=int, default=4096)
    add_flags(p, lsg.LSGSettings, "LSG settings")
    return p


def forward_section(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Wall time of one no-grad forward (the model is warm: `peak_memory` ran it first) and its output."""
    with torch.no_grad():
        began = time.perf_counter()
        output = model(**batch).last_hidden_state
        seconds = time.perf_counter() - began
    tokens = batch["input_ids"].numel()
    return {"seconds": seconds, "tokens_per_second": tokens / seconds, "output_shape": list(output.shape),
            "finite": bool(output.isfinite().all())}


def invariant_section(original: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str,
                      max_length: int, settings: lsg.LSGSettings) -> dict[str, Any]:
    """I3 on a prefix of `text`: it holds under the kernel's short rule only, so at most 2*block_size tokens."""
    unpooled = lsg.convert(original, tokenizer, replace(settings, pool_with_global=False),
                           max_length=max_length).eval()
    tokens = min(INVARIANT_TOKENS, 2 * settings.block_size)
    prefix = tokenizer(text, truncation=True, max_length=tokens, return_tensors="pt")
    return {"tokens": prefix["input_ids"].shape[1], "max_abs_diff": tokens_only_max_diff(original, unpooled, prefix)}


def cosine_section(original: PreTrainedModel, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   articles: list[dict[str, str]]) -> dict[str, Any]:
    """I3': cosine between the two models' mean-pooled embeddings of real BBC leads."""
    texts = lead_texts(articles, tokenizer, COSINE_TEXTS, COSINE_MAX_TOKENS)
    leads = tokenizer(texts, truncation=True, max_length=COSINE_MAX_TOKENS, padding=True, return_tensors="pt")
    cosines = embedding_cosines(original, model, leads)
    return {"texts": len(texts), "max_tokens": COSINE_MAX_TOKENS,
            "mean_tokens": leads["attention_mask"].sum(1).float().mean().item(),
            "mean": cosines.mean().item(), "min": cosines.min().item()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of `python -m tools.demo`; returns the report it printed and saved."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()
    path = args.model or minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    original = AutoModel.from_pretrained(path).eval()
    settings = from_flags(lsg.LSGSettings, args)
    model = lsg.convert(original, tokenizer, settings, max_length=args.max_length).eval()

    articles = bbc_articles()
    article, tokens = longest_article(articles, tokenizer)
    if tokens < args.max_length:
        raise SystemExit(f"the longest BBC article has {tokens} tokens; pass --max-length <= {tokens}")
    print(f"converted {path} to LSG-{args.max_length}; running it on {article['id']} ({tokens} tokens) ...")

    lengths = [args.max_length // 4, args.max_length // 2, args.max_length]
    peaks = peak_memory(model, tokenizer, article["text"], lengths)
    batch = tokenizer(article["text"], truncation=True, max_length=args.max_length, return_tensors="pt")
    config = original.config
    report = {
        "model": {"path": str(path), "class": type(model).__name__, "layers": config.num_hidden_layers,
                  "hidden_size": config.hidden_size, "heads": config.num_attention_heads,
                  "parameters": sum(p.numel() for p in original.parameters())},
        "settings": {"max_length": args.max_length, **settings.to_dict(),
                     "keys_per_query": settings.keys_per_query()},
        "article": {"id": article["id"], "title": article["title"], "tokens": tokens,
                    "input_tokens": batch["input_ids"].shape[1]},
        "forward": forward_section(model, batch),
        "memory": {"peak_bytes": {str(n): peaks[n] for n in lengths},
                   "ratios": {f"{b}/{a}": peaks[b] / peaks[a] for a, b in pairwise(lengths)}},
        "invariant": invariant_section(original, tokenizer, article["text"], args.max_length, settings),
        "cosine": cosine_section(original, model, tokenizer, articles),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "lsg": lsg.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()},
    }
    report["seconds"] = time.perf_counter() - start
    write_json(args.out, report)
    print(format_report(report))
    print(f"report     {args.out}")
    return report


if __name__ == "__main__":
    main()
