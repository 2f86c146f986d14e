"""The LSG hyper-parameters (design §1.1), validated once.

`LSGSettings` is what the attention kernel reads. Every field keeps the name the authors' converter
uses, so configs written for it carry over. Bad values raise `ValueError` at construction, naming the
parameter, its value and what is accepted: nothing is clamped or rewritten (design D16).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from lsg.validation import check_bool, check_choice, check_int

SPARSITY_TYPES: tuple[str, ...] = ("none", "stride", "block_stride", "pooling", "norm", "lsh", "bos_pooling")
MAX_GLOBAL_TOKENS = 512  # rows of the global-embedding table (design §2.3)
LSG_MARKER = "lsg"  # config `base_model_prefix` the authors' converter stores to mark LSG checkpoints


def normalize_sparsity_type(value: str | None) -> str:
    """Map the accepted spellings of "local only" (None, "none", "None") to "none"; reject unknown types."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return "none"
    check_choice("sparsity_type", value, SPARSITY_TYPES)
    return value


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class LSGSettings:
    """LSG attention parameters (design §1.1).

    Args:
        block_size: bs, local block length; queries are processed per block and see blocks j-1, j, j+1.
        sparse_block_size: sbs, sparse keys taken on EACH side of the local window (0 disables sparse).
        sparsity_factor: f, each block of bs tokens is summarised by bs/f sparse tokens (0 disables sparse).
        sparsity_type: selector building the sparse tokens, one of `SPARSITY_TYPES` ("none" = local only).
        num_global_tokens: G, learned tokens prepended to every sequence, in [1, 512].
        mask_first_token: hide the first real token (CLS/<s>) as a key, since global 0 duplicates it.
        pool_with_global: after the encoder, the first real token's output is global 0's output.
        lsh_num_pre_rounds: extra LSH merging rounds before the final clustering round.
        lsh_seed: seed of the per-layer LSH projections used in eval mode (training draws fresh ones).
        adaptive: pad sequences longer than 2*bs to a block multiple; if False such inputs raise.
    """

    block_size: int = 128
    sparse_block_size: int = 128
    sparsity_factor: int = 2
    sparsity_type: str | None = field(default="norm", metadata={"choices": SPARSITY_TYPES})
    num_global_tokens: int = 1
    mask_first_token: bool = False
    pool_with_global: bool = True
    lsh_num_pre_rounds: int = 1
    lsh_seed: int = 0
    adaptive: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity_type", normalize_sparsity_type(self.sparsity_type))
        check_int("block_size", self.block_size, 1)
        check_int("sparse_block_size", self.sparse_block_size, 0)
        check_int("sparsity_factor", self.sparsity_factor, 0)
        check_int("num_global_tokens", self.num_global_tokens, 1, MAX_GLOBAL_TOKENS)
        check_int("lsh_num_pre_rounds", self.lsh_num_pre_rounds, 0)
        check_int("lsh_seed", self.lsh_seed, 0)
        for name in ("mask_first_token", "pool_with_global", "adaptive"):
            check_bool(name, getattr(self, name))
        if self.mask_first_token and not self.pool_with_global:
            raise ValueError(
                "mask_first_token=True needs pool_with_global=True: the first token is hidden as a key, so its "
                "output must come from global token 0; set pool_with_global=True or mask_first_token=False"
            )
        if not self.sparse_enabled:
            return
        bs, f = self.block_size, self.sparsity_factor
        if f > bs or bs % f:
            raise ValueError(
                f"sparsity_factor={f} must divide block_size={bs}; use one of {_divisors(bs)} "
                "(or 0 / sparsity_type=None for local attention only)"
            )
        if self.sparsity_type in ("norm", "lsh"):
            chunk = self.selection_chunk
            if bs % chunk or (f > 1 and chunk % f):
                raise ValueError(
                    f"sparse_block_size={self.sparse_block_size} is smaller than block_size={bs}, so "
                    f"{self.sparsity_type!r} selects within chunks of {chunk} tokens: the chunk must divide "
                    f"block_size and be a multiple of sparsity_factor={f}; use sparse_block_size >= {bs} or one "
                    f"of {[d for d in _divisors(bs) if d % f == 0]}"
                )

    @property
    def sparse_enabled(self) -> bool:
        """Whether sparse keys exist at all (design §1.3: three spellings of local-only)."""
        return self.sparsity_type != "none" and self.sparse_block_size > 0 and self.sparsity_factor > 0

    @property
    def sparse_per_block(self) -> int:
        """r = bs / f: sparse tokens summarising each block of bs tokens."""
        return self.block_size // self.sparsity_factor

    @property
    def selection_chunk(self) -> int:
        """B' = min(bs, sbs): the chunk `norm` and `lsh` select/cluster within (design §3.4)."""
        return min(self.block_size, self.sparse_block_size)

    def keys_per_query(self) -> int:
        """Keys a real-token query sees when T > 2*bs (design §4, invariant I7)."""
        sparse = 2 * self.sparse_block_size if self.sparse_enabled else 0
        return self.num_global_tokens + sparse + 3 * self.block_size

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_object(cls, obj: Any) -> LSGSettings:
        """Read the LSG fields from any object carrying them as attributes (an HF config)."""
        return cls(**{name: getattr(obj, name) for name in cls.field_names() if hasattr(obj, name)})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}
