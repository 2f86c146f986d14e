"""Position schemes (lsg.position_schemes) against their formulas, and causal attention (lsg.blockwise) against
brute-force masks and dense masked attention, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from lsg.blockwise import blockwise_visible
from lsg.position_schemes import (
    POSITION_SCHEMES,
    XPOS_SCALE_BASE,
    alibi_slopes,
    position_scheme,
    sinusoids,
)
from lsg.settings import LSGSettings
from lsg.variants import ATTENTION_VARIANTS

F64 = torch.float64


def qk(heads: int = 2, length: int = 9, dim: int = 8, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, heads, length, dim, dtype=F64), torch.randn(batch, heads, length, dim, dtype=F64)


def scores(name: str, query, key, positions, scaling: float = 1.0, heads: int = 2) -> torch.Tensor:
    """scaling * q'.k' for every (query, key) pair after the scheme's transform."""
    scheme = position_scheme(name, width=heads * query.shape[-1], heads=heads, max_length=16)
    q, k = scheme.transform(query, key, positions, scaling)
    return scaling * q @ k.transpose(-1, -2)


def test_registry_holds_every_scheme():
    assert {"learned", "sinusoidal", "rope", "alibi", "xpos", "none"} <= set(POSITION_SCHEMES)
    with pytest.raises(KeyError, match="Did you mean 'xpos'"):
        POSITION_SCHEMES.get("xpso")


def test_xpos_matches_its_formula_in_float64():
    """q'.k' = sum_i zeta_i^((n-m)/B) Re(q_i conj(k_i) e^{i(n-m)theta_i}), pairs (x_2i, x_2i+1) as complex numbers."""
    query, key = qk(heads=1, length=7, dim=8)
    positions = torch.arange(100, 107)
    got = scores("xpos", query, key, positions, heads=1)[0, 0]
    D = 8
    i = torch.arange(D // 2, dtype=F64)
    theta = 10000.0 ** (-2 * i / D)
    zeta = (2 * i / D + 0.4) / 1.4
    qc = torch.complex(query[0, 0, :, 0::2], query[0, 0, :, 1::2])
    kc = torch.complex(key[0, 0, :, 0::2], key[0, 0, :, 1::2])
    want = torch.empty(7, 7, dtype=F64)
    for a, n in enumerate(positions.tolist()):
        for b, m in enumerate(positions.tolist()):
            rotation = torch.exp(1j * (n - m) * theta)
            want[a, b] = (zeta ** ((n - m) / XPOS_SCALE_BASE) * (qc[a] * kc[b].conj() * rotation).real).sum()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["xpos", "rope", "alibi"])
def test_relative_schemes_are_shift_invariant(name):
    """Moving every position by the same amount leaves every score unchanged: the decay (XPOS) and the bias
    (ALiBi, up to its per-query constant, removed here by centring each row) depend on n - m only."""
    query, key = qk()
    base = scores(name, query, key, torch.arange(9), scaling=0.3)
    shifted = scores(name, query, key, torch.arange(9) + 1000, scaling=0.3)
    if name == "alibi":  # the softmax sees only differences within a row
        base, shifted = base - base[..., :1], shifted - shifted[..., :1]
    torch.testing.assert_close(shifted, base, rtol=1e-9, atol=1e-9)


def test_xpos_decays_with_distance_against_rope():
    """XPOS = RoPE score with pair i scaled by zeta_i^((n-m)/B): with a single pair per head it is exactly that."""
    query, key = qk(heads=1, length=5, dim=2)
    positions = torch.arange(5) * 300
    ratio = scores("xpos", query, key, positions, heads=1) / scores("rope", query, key, positions, heads=1)
    distance = (positions[:, None] - positions[None, :]).to(F64)
    torch.testing.assert_close(ratio[0, 0], (0.4 / 1.4) ** (distance / XPOS_SCALE_BASE), rtol=1e-9, atol=1e-12)


def test_rope_scores_depend_on_the_distance_only():
    query, key = qk(heads=1, length=2, dim=8)
    q, k = query[..., :1, :].expand(-1, -1, 2, -1), key[..., :1, :].expand(-1, -1, 2, -1)  # same vectors twice
    s = scores("rope", q, k, torch.tensor([3, 10]), heads=1)[0, 0]
    s2 = scores("rope", q, k, torch.tensor([40, 47]), heads=1)[0, 0]
    torch.testing.assert_close(s2, s, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(s[1, 0], s[1, 1])  # but they do depend on it


@pytest.mark.parametrize(("heads", "want"), [
    (4, [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]),
    # 6 heads: the 4 slopes of 4 heads, then the 1st and 3rd of 8 heads (2^-1, 2^-2, ..., 2^-8)
    (6, [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]),
    # 12 heads: the 8 slopes of 8 heads, then the odd-numbered ones of 16 heads (2^-0.5, 2^-1, ...)
    (12, [2.0 ** -k for k in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]),
    (1, [2 ** -8]),
    (3, [2 ** -4, 2 ** -8, 2 ** -2]),
])
def test_alibi_slopes_follow_the_published_recipe(heads, want):
    torch.testing.assert_close(alibi_slopes(heads), torch.tensor(want, dtype=F64), rtol=0, atol=1e-15)


def test_alibi_through_any_kernel_equals_the_explicit_bias():
    """softmax(s q.k - slope (n-m)) over causal keys, written out, equals the kernel run on ALiBi's features."""
    heads, T, D = 3, 11, 4
    query, key = qk(heads=heads, length=T, dim=D)
    value = torch.randn(1, heads, T, D, dtype=F64)
    scheme = position_scheme("alibi", width=heads * D, heads=heads, max_length=T)
    q, k = scheme.transform(query, key, torch.arange(T), 0.5)
    got = ATTENTION_VARIANTS.get("lsg_causal_dense")(q, k, scheme.align_values(value), torch.ones(1, T, dtype=bool),
                                                     LSGSettings(), scaling=0.5)[..., :D]
    n = torch.arange(T)
    bias = -alibi_slopes(heads)[:, None, None] * (n[:, None] - n[None, :])
    logits = 0.5 * query @ key.transpose(-1, -2) + bias
    logits = logits.masked_fill(n[None, :] > n[:, None], -math.inf)
    torch.testing.assert_close(got, logits.softmax(-1) @ value, rtol=1e-10, atol=1e-10)


def test_absolute_schemes():
    hidden = torch.zeros(1, 5, 6)
    torch.testing.assert_close(position_scheme("sinusoidal", width=6, heads=2, max_length=4).embed(
        hidden, torch.arange(5))[0], sinusoids(torch.arange(5), 6))
    assert sinusoids(torch.tensor([2]), 4)[0, 1].item() == pytest.approx(math.cos(2.0))
    assert sinusoids(torch.tensor([2]), 4)[0, 2].item() == pytest.approx(math.sin(2.0 / 100))
    learned = position_scheme("learned", width=6, heads=2, max_length=4)
    rows = learned.embed(torch.zeros(1, 10, 6), torch.arange(10))[0]
    torch.testing.assert_close(rows[4:8], rows[:4])  # tiled past the trained length: n reads row n mod L
    assert not torch.equal(rows[0], rows[1])


def test_bad_shapes_fail_naming_the_parameter():
    with pytest.raises(ValueError, match="width=10 must be a multiple of heads=4"):
        position_scheme("xpos", width=10, heads=4, max_length=8)
    with pytest.raises(ValueError, match="must be even"):
        position_scheme("rope", width=6, heads=2, max_length=8)
    with pytest.raises(ValueError, match="max_length=0"):
        position_scheme("learned", width=8, heads=2, max_length=0)


# --- causal attention ----------------------------------------------------------------------------------------

def brute_force_blockwise(length: int, block: int) -> torch.Tensor:
    """The rule of LEX written out: query n in block b = n // w sees block b-1 whole and block b up to itself."""
    mask = torch.zeros(length, length, dtype=torch.bool)
    for n in range(length):
        b = n // block
        for m in range(length):
            mask[n, m] = (m // block == b and m <= n) or (b >= 1 and m // block == b - 1)
    return mask


@pytest.mark.parametrize(("length", "block"), [(1, 1), (7, 2), (12, 4), (13, 4), (9, 16)])
def test_blockwise_mask_matches_brute_force(length, block):
    n = torch.arange(length)
    assert torch.equal(blockwise_visible(n[:, None], n[None, :], block), brute_force_blockwise(length, block))


def dense_reference(query, key, value, mask: torch.Tensor, valid: torch.Tensor, scaling: float) -> torch.Tensor:
    logits = scaling * query @ key.transpose(-1, -2)
    logits = logits.masked_fill(~(mask & valid[:, None, None, :]), -math.inf)
    return logits.softmax(-1) @ value


@pytest.mark.parametrize(("length", "block"), [(16, 4), (13, 4), (5, 8), (24, 3)])
def test_blockwise_kernel_equals_dense_masked_attention(length, block):
    query, key = qk(heads=2, length=length, dim=4, batch=2)
    value = torch.randn(2, 2, length, 4, dtype=F64)
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, : length // 3] = False  # left padding: those queries are discarded, the others must not see them
    settings = LSGSettings(block_size=block, sparsity_type=None)
    got = ATTENTION_VARIANTS.get("lsg_blockwise_causal")(query, key, value, valid, settings, scaling=0.4)
    want = dense_reference(query, key, value, brute_force_blockwise(length, block), valid, 0.4)
    # compare the real queries' outputs, (queries, H, D)
    torch.testing.assert_close(got.transpose(1, 2)[valid], want.transpose(1, 2)[valid], rtol=1e-10, atol=1e-10)


def test_blockwise_equals_dense_causal_up_to_twice_the_block():
    """At T <= 2w every earlier key is in the same or the previous block: LEX trains with it unchanged."""
    query, key = qk(heads=2, length=8, dim=4)
    value = torch.randn(1, 2, 8, 4, dtype=F64)
    valid = torch.ones(1, 8, dtype=torch.bool)
    args = (query, key, value, valid, LSGSettings(block_size=4))
    torch.testing.assert_close(ATTENTION_VARIANTS.get("lsg_blockwise_causal")(*args, scaling=0.3),
                               ATTENTION_VARIANTS.get("lsg_causal_dense")(*args, scaling=0.3), rtol=1e-12, atol=1e-12)


def test_causal_variants_refuse_bidirectional_use():
    query, key = qk()
    for name in ("lsg_causal_dense", "lsg_blockwise_causal"):
        with pytest.raises(ValueError, match="causal=False"):
            ATTENTION_VARIANTS.get(name)(query, key, key, torch.ones(1, 9, dtype=bool), LSGSettings(), scaling=1.0,
                                         causal=False)
