"""The LSG layout (design §3.1-3.2): which keys each query sees, as window bounds and small mask predicates.

For T real tokens after G global tokens, with bs = block_size, sbs = sparse_block_size and r = bs/f:

* short rule: if T <= 2*bs, every query (globals included) sees all G+T keys; nothing is padded;
* otherwise the tokens are padded to T' = ceil(T/bs)*bs (N = T'/bs blocks), global queries see every key,
  and the queries of token block j see the G globals and
  - the local window: tokens [(j-1)*bs, (j+2)*bs), i.e. blocks j-1, j, j+1;
  - two sparse windows of the selector's sequence S (T'/f entries, r per block):
    S[(j-1)r - sbs, (j-1)r) and S[(j+2)r, (j+2)r + sbs), the sbs entries on each side of the entries that
    summarise blocks j-1..j+1.
  A window is cut at the ends of its sequence. Token keys (1) and sparse entries (s) seen by the token queries
  at bs=2, f=2 (r=1), sbs=2 and T'=8 (S has 4 entries; each row is one block of 2 queries)::

      block   tokens 0..7        S 0..3
        0     1 1 1 1 . . . .    . . s s
        1     1 1 1 1 1 1 . .    . . . s
        2     . . 1 1 1 1 1 1    s . . .
        3     . . . . 1 1 1 1    s s . .

Causal (decoder) attention keeps, of the same layout, what lies in the past (design §3.7): the global queries see
only the global keys; under the short rule a token sees the globals and the tokens up to itself; otherwise a
query of block j sees the globals, the LEFT sparse window only (entries of blocks j-2 and earlier: every
selector builds block b's entries from block b's tokens alone, so they hold no later token) and the tokens of
blocks j-1 and j up to itself. Kernels keep the bidirectional key slots and mask the rest (`causal_local_rows`).

Every kernel (`lsg.attention`, `lsg.fast`, `lsg.flex`), flex's mask_mod and block mask, and the pattern drawing take
the rule from here. The dense reference (`lsg.reference`) writes it out again on purpose: it is the check.
The functions take block and token indices as ints or as broadcasting integer tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lsg.settings import LSGSettings

Index = int | Tensor  # a block, token or sparse-entry index, or a broadcasting tensor of them

LOCAL_BLOCK_OFFSETS = (-1, 0, 1)  # block j's local window holds blocks j-1, j, j+1, in this key order


def uses_short_rule(length: int, settings: LSGSettings) -> bool:
    """Whether T = `length` real tokens fall under the short rule (T <= 2*bs): dense attention, no padding."""
    return length <= 2 * settings.block_size


def padded_length(length: int, settings: LSGSettings) -> int:
    """T' for T real tokens: unchanged under the short rule, else the next block multiple (design §3.1).

    Raises:
        ValueError: padding is needed but `adaptive=False` (design D15).
    """
    bs = settings.block_size
    if uses_short_rule(length, settings) or length % bs == 0:
        return length
    if not settings.adaptive:
        raise ValueError(
            f"sequence length {length} is not a multiple of block_size={bs} and adaptive=False; "
            f"pad inputs to a multiple of {bs} or set adaptive=True"
        )
    return -(-length // bs) * bs


def local_window(block: Index, block_size: int) -> tuple[Index, Index]:
    """[lo, hi) token bounds of block j's local window, before cutting at the sequence ends."""
    return (block + LOCAL_BLOCK_OFFSETS[0]) * block_size, (block + LOCAL_BLOCK_OFFSETS[-1] + 1) * block_size


def local_width(block_size: int) -> int:
    """Keys in a local window (3*bs), counting the zero-filled ones past the sequence ends."""
    return len(LOCAL_BLOCK_OFFSETS) * block_size


def sparse_windows(block: Index, settings: LSGSettings) -> tuple[tuple[Index, Index], tuple[Index, Index]]:
    """[lo, hi) bounds in S of block j's left and right sparse windows, before cutting at the ends of S.

    Valid for every r >= 1 (the authors' code crashes for odd r and shifts the right window for r == 1, D3).
    """
    r, sbs = settings.sparse_per_block, settings.sparse_block_size
    left_end, right_start = (block - 1) * r, (block + 2) * r
    return (left_end - sbs, left_end), (right_start, right_start + sbs)


def sparse_margin(settings: LSGSettings) -> int:
    """How far past either end of S the windows reach (block 0's left one, block N-1's right one): sbs + r.

    Kernels pad S by this many zeros on both sides so that every window is a plain slice of the padded S.
    """
    return settings.sparse_block_size + settings.sparse_per_block


def sparse_window_index(blocks: int, settings: LSGSettings, device: torch.device | None = None) -> Tensor:
    """Indices into S padded by `sparse_margin` of every block's sparse keys, left window then right: (N, 2*sbs)."""
    (left, _), (right, _) = sparse_windows(torch.arange(blocks, device=device)[:, None], settings)
    within = torch.arange(settings.sparse_block_size, device=device)[None]
    return torch.cat([left + within, right + within], dim=1) + sparse_margin(settings)


def local_windows(tokens: Tensor, block_size: int, start: int = 0, stop: int | None = None,
                  fill: float | bool = 0) -> Tensor:
    """The local windows of token blocks [start, stop) along dim 2, as a strided view where possible.

    Args:
        tokens: (B, H, T', ...) with T' a multiple of `block_size`.
        block_size: bs.
        start, stop: the blocks wanted (default: all N = T'/bs).
        fill: value of the window entries past either end of the sequence.

    Returns:
        (B, H, stop - start, 3*bs, ...): a view of `tokens`, except that a range touching either end of the
        sequence is a (small) padded copy.
    """
    length = tokens.shape[2]
    stop = length // block_size if stop is None else stop
    low, high = local_window(start, block_size)[0], local_window(stop - 1, block_size)[1]
    rows = tokens[:, :, max(low, 0) : min(high, length)]
    if low < 0 or high > length:
        pad = [0, 0] * (tokens.dim() - 3) + [max(0, -low), max(0, high - length)]
        rows = F.pad(rows, pad, value=fill)
    return rows.unfold(2, local_width(block_size), block_size).movedim(-1, 3)


def _inside(index: Index, bounds: tuple[Index, Index]) -> Index:
    low, high = bounds
    return (index >= low) & (index < high)


def sees_local(query: Index, key: Index, block_size: int, causal: bool = False) -> Index:
    """Mask predicate: whether token query `query` sees token key `key` through its local window (causal: and
    `key` is not later than `query`)."""
    inside = _inside(key, local_window(query // block_size, block_size))
    return inside & (key <= query) if causal else inside


def sees_sparse(query: Index, entry: Index, settings: LSGSettings, causal: bool = False) -> Index:
    """Mask predicate: whether token query `query` sees entry `entry` of S through one of its sparse windows
    (causal: the left one only).

    Entries outside [0, len(S)) are not excluded here: callers bound `entry` to S.
    """
    left, right = sparse_windows(query // settings.block_size, settings)
    return _inside(entry, left) if causal else _inside(entry, left) | _inside(entry, right)


def causal_local_rows(block_size: int, device: torch.device | None = None) -> Tensor:
    """(bs, 3*bs) bool: which of its local window's key slots query row i of a block may see under causal attention.

    The same for every block (slot c of block j is token (j-1)*bs + c), so kernels combine it with the per-block
    validity. Slots of block j+1 are never seen.
    """
    rows = torch.arange(block_size, device=device)[:, None] + block_size  # row i of block 1 is token bs + i
    return sees_local(rows, torch.arange(local_width(block_size), device=device)[None], block_size, causal=True)


def short_rule_visibility(tokens: int, globals_: int, causal: bool, device: torch.device | None = None
                          ) -> Tensor | None:
    """(G+T, G+T) bool of the short rule's causal form (globals see the globals, a token the globals and the tokens
    up to itself), or None when bidirectional (every query sees every key)."""
    if not causal:
        return None
    total = globals_ + tokens
    query, key = torch.arange(total, device=device)[:, None], torch.arange(total, device=device)[None]
    return (key < globals_) | ((query >= globals_) & (key <= query))
