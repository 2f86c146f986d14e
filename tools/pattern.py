"""Draw the LSG attention pattern (design §3.2) and its cost (design §4) from the library's own rules.

    python -m tools.pattern docs/lsg_pattern.png --length 64 --block-size 8 --sparse-block-size 4

Left panel: which keys each query sees, on a (G+T) x (G+T) grid of queries [globals; tokens] by keys
[globals; tokens], from the kernels' own rule (`lsg.layout`). Sparse keys are not tokens but entries of
the sparse sequence S (design §3.4), so the grid shows the tokens they summarise: dark cells are the tokens
head 0 actually reads (found by running the dense reference selector on one-hot keys), light cells the span
of tokens the visible sparse entries stand for.
Right panel: keys per real-token query, `LSGSettings.keys_per_query` against full attention.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from lsg.layout import padded_length, sees_local, sees_sparse, uses_short_rule
from lsg.reference import reference_sparse_tokens
from lsg.settings import SPARSITY_TYPES, LSGSettings

# Cell codes of the pattern grid, in increasing drawing priority.
HIDDEN, SPARSE_SPAN, SPARSE_READ, LOCAL, GLOBAL = range(5)
_COLOURS = ("#ffffff", "#fdd9a8", "#e6740f", "#2f6db3", "#b2182b")

# Selectors whose picks depend on the key contents: no fixed token can be drawn as "read" for them.
_CONTENT_DEPENDENT = ("norm", "lsh")

DEFAULT_COST_LENGTHS: tuple[int, ...] = tuple(512 * 2**k for k in range(6))  # 512 .. 16384


def sparse_sources(length: int, settings: LSGSettings) -> tuple[Tensor, Tensor]:
    """Which tokens each sparse entry of head 0 reads, and which tokens it stands for.

    Args:
        length: T', the padded number of tokens (a block multiple when T' > 2*bs).
        settings: LSG settings with sparse attention enabled.

    Returns:
        (read, span), both (T'/f, T') bool. `read[s, t]`: token t contributes to S[s] for head 0
        (all False for content-dependent selectors, `norm` and `lsh`). `span[s, t]`: t lies in the
        group S[s] summarises: [s*f, (s+1)*f), or the whole selection chunk (block for
        `block_stride`, min(bs, sbs) tokens for `norm`/`lsh`) when the selector picks within one.
    """
    f = settings.sparsity_factor
    entries = length // f
    s = torch.arange(entries)[:, None]
    t = torch.arange(length)[None]
    chunked = {"block_stride": settings.block_size, "norm": settings.selection_chunk, "lsh": settings.selection_chunk}
    chunk = chunked.get(settings.sparsity_type, f) if f > 1 else 1
    per_chunk = chunk // f if f > 1 else 1
    span = (t // chunk) == (s // per_chunk)
    if f > 1 and settings.sparsity_type in _CONTENT_DEPENDENT:
        return torch.zeros_like(span), span
    # One-hot keys make each sparse key the weight vector over tokens that built it (B = H = 1, D = T').
    one_hot = torch.eye(length, dtype=torch.float64)[None, None]
    keys, _, _ = reference_sparse_tokens(
        one_hot, one_hot, torch.ones(1, length, dtype=torch.bool), torch.zeros(1, 1, length, dtype=torch.float64),
        settings, scaling=1.0,
    )
    return keys[0, 0] > 0, span


def attention_grid(length: int, settings: LSGSettings) -> Tensor:
    """Cell codes (HIDDEN, SPARSE_SPAN, SPARSE_READ, LOCAL, GLOBAL) of the (G+T) x (G+T) pattern.

    Rows are queries [globals; tokens], columns keys [globals; tokens]; T = `length` real tokens.
    Inputs longer than 2*bs are laid out on the padded length T', then cropped back to T.
    """
    G = settings.num_global_tokens
    padded = padded_length(length, settings)
    short = uses_short_rule(length, settings)
    grid = torch.full((G + padded, G + padded), LOCAL if short else HIDDEN, dtype=torch.long)
    tokens = grid[G:, G:]  # (T', T') view: token queries by token keys
    if not short:
        queries = torch.arange(padded)[:, None]
        if settings.sparse_enabled:
            entries = torch.arange(padded // settings.sparsity_factor)[None]
            sparse = sees_sparse(queries, entries, settings)  # (T', T'/f)
            read, span = sparse_sources(padded, settings)
            for code, sources in ((SPARSE_SPAN, span), (SPARSE_READ, read)):
                tokens[(sparse.double() @ sources.double()) > 0] = code  # some visible entry uses the token
        tokens[sees_local(queries, torch.arange(padded)[None], settings.block_size)] = LOCAL
    grid[:G] = GLOBAL  # global queries see every key, and every query sees the globals
    grid[:, :G] = GLOBAL
    if settings.mask_first_token:
        grid[:, G] = HIDDEN  # the first real token is hidden as a key from every query (design §3.1)
    return grid[: G + length, : G + length]


def keys_per_query_curve(lengths: Sequence[int], settings: LSGSettings) -> tuple[list[int], list[int]]:
    """Keys one real-token query attends to, for LSG and for full attention over T tokens (design §4).

    LSG: G + T under the short rule (T <= 2*bs), else `settings.keys_per_query()` = G + 2*sbs + 3*bs.
    """
    G = settings.num_global_tokens
    lsg = [G + length if uses_short_rule(length, settings) else settings.keys_per_query() for length in lengths]
    return lsg, list(lengths)


def _describe(settings: LSGSettings) -> str:
    return (
        f"bs={settings.block_size}, sbs={settings.sparse_block_size}, f={settings.sparsity_factor}, "
        f"sparsity_type={settings.sparsity_type}, G={settings.num_global_tokens}"
    )


def _draw_grid(ax: Axes, length: int, settings: LSGSettings) -> None:
    G, bs = settings.num_global_tokens, settings.block_size
    grid = attention_grid(length, settings)
    ax.imshow(grid.numpy(), cmap=ListedColormap(_COLOURS), norm=BoundaryNorm(range(len(_COLOURS) + 1), len(_COLOURS)),
              interpolation="nearest")
    blocks = -(-length // bs)
    if blocks <= 32:  # beyond that the boundary lines would cover the cells
        for edge in range(bs, length, bs):
            ax.axhline(G + edge - 0.5, color="0.55", linewidth=0.6)
            ax.axvline(G + edge - 0.5, color="0.55", linewidth=0.6)
    ax.axhline(G - 0.5, color="black", linewidth=1.4)  # globals | tokens
    ax.axvline(G - 0.5, color="black", linewidth=1.4)
    # Label the globals and token blocks at their centres: at most ~12 labels, so every `step`-th block,
    # skipping block 0 when thinned out (its label would then run into the globals' label).
    step = -(-blocks // 12)
    starts = range(0 if step == 1 else bs * step, length, bs * step)
    positions = [(G - 1) / 2, *(G + t + (min(bs, length - t) - 1) / 2 for t in starts)]
    labels = ["g" if G == 1 else f"g0-{G - 1}", *(f"{t}-{min(t + bs, length) - 1}" for t in starts)]
    ax.set_xticks(positions, labels, fontsize=7)
    ax.set_yticks(positions, labels, fontsize=7)
    ax.tick_params(length=0)
    lines_note = f"; grey lines = blocks of bs={bs}" if blocks <= 32 else ""
    ax.set_xlabel(f"key: global tokens (g), then real tokens{lines_note}")
    ax.set_ylabel("query: global tokens (g), then real tokens")
    padded = padded_length(length, settings)
    if uses_short_rule(length, settings):
        title = f"Who sees whom, T={length}: T <= 2*bs, so every query sees all G + T keys"
    else:
        layout = f"N={padded // bs} blocks" + (f" of T'={padded} (padding not shown)" if padded != length else "")
        title = (f"Who sees whom, T={length}, {layout}\n"
                 f"a token query sees G + 2*sbs + 3*bs = {settings.keys_per_query()} keys")
    ax.set_title(title, fontsize=10)
    sbs = settings.sparse_block_size
    handles = [
        Patch(color=_COLOURS[GLOBAL], label="global (global query or global key)"),
        Patch(color=_COLOURS[LOCAL], label="local: blocks j-1, j, j+1"),
    ]
    if settings.sparse_enabled:
        if settings.sparsity_type in _CONTENT_DEPENDENT and settings.sparsity_factor > 1:
            span_label = f"sparse: tokens the {2 * sbs} sparse keys are built from, by key content"
        else:
            span_label = f"sparse: span summarised by the {2 * sbs} sparse keys"
            handles.append(Patch(color=_COLOURS[SPARSE_READ], label="sparse: tokens read by head 0's sparse keys"))
        handles.append(Patch(color=_COLOURS[SPARSE_SPAN], label=span_label))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=7.5,
              frameon=False)


def _draw_cost(ax: Axes, lengths: Sequence[int], settings: LSGSettings) -> None:
    lsg, full = keys_per_query_curve(lengths, settings)
    ax.plot(lengths, full, "o-", color="0.3", label="full attention: T")
    ax.plot(lengths, lsg, "o-", color=_COLOURS[LOCAL],
            label=f"LSG: G + 2*sbs + 3*bs = {settings.keys_per_query()}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(lengths), [str(T) for T in lengths], fontsize=8)
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel("keys per real-token query (log scale)")
    ax.set_title(f"Cost per query at {_describe(settings)}", fontsize=10)
    ax.annotate(f"{lsg[-1] / full[-1]:.2f}x of full", (lengths[-1], lsg[-1]), textcoords="offset points",
                xytext=(-10, 10), ha="right", fontsize=8, color=_COLOURS[LOCAL])
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8, loc="upper left")


def draw_pattern(
    length: int, settings: LSGSettings, *, cost_settings: LSGSettings | None = None,
    cost_lengths: Sequence[int] = DEFAULT_COST_LENGTHS,
) -> Figure:
    """Figure with the attention grid of `settings` at `length` tokens and the keys-per-query curve.

    The curve uses `cost_settings` (default: `LSGSettings()`, the paper's 128/128/2), since the grid's
    small blocks would make every realistic length look the same.
    """
    fig = Figure(figsize=(14, 7.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid_ax, cost_ax = fig.subplots(1, 2, width_ratios=(1.1, 1))
    _draw_grid(grid_ax, length, settings)
    _draw_cost(cost_ax, cost_lengths, cost_settings or LSGSettings())
    fig.suptitle(f"LSG attention pattern: T={length}, {_describe(settings)}", fontsize=12)
    return fig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.pattern", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", type=Path, help="PNG file to write")
    p.add_argument("--length", type=int, default=64, help="T, number of real tokens drawn")
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--sparse-block-size", type=int, default=4)
    p.add_argument("--sparsity-factor", type=int, default=2)
    p.add_argument("--sparsity-type", default="stride", choices=SPARSITY_TYPES)
    p.add_argument("--num-global-tokens", type=int, default=1)
    p.add_argument("--mask-first-token", action="store_true")
    p.add_argument("--dpi", type=int, default=150)
    return p


def main(argv: list[str] | None = None) -> Path:
    """Entry point of `python -m tools.pattern`; returns the written PNG path."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.length < 1:
        parser.error(f"--length={args.length} must be >= 1")
    try:
        settings = LSGSettings(
            block_size=args.block_size, sparse_block_size=args.sparse_block_size,
            sparsity_factor=args.sparsity_factor, sparsity_type=args.sparsity_type,
            num_global_tokens=args.num_global_tokens, mask_first_token=args.mask_first_token,
        )
    except ValueError as error:
        parser.error(str(error))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw_pattern(args.length, settings).savefig(args.out, dpi=args.dpi)
    return args.out


if __name__ == "__main__":
    main()
