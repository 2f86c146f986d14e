"""Causal LSG (design §3.7) at kernel level: every selector on every kernel against the float64 reference, the
reference's own visibility against the causal rule, and the property that no output depends on a later token
(invariant I6), padding included."""

import functools
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsg import fast
from lsg.attention import lsg_blocked_attention, lsg_layer
from lsg.flex import flex_attention_kernel
from lsg.layout import causal_local_rows, sees_local, sees_sparse
from lsg.reference import reference_lsg_attention, reference_visibility
from lsg.settings import SPARSITY_TYPES, LSGSettings
from lsg.variants import ATTENTION_VARIANTS


def eager_flex(query, key, value, token_valid, settings, *, scaling, causal, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncompiled flex warns that it materialises the scores
        return lsg_layer(
            query,
            key,
            value,
            token_valid,
            settings,
            scaling=scaling,
            dropout=0.0,
            training=False,
            layer_index=0,
            causal=causal,
            kernel=functools.partial(flex_attention_kernel, compiled=False),
        )


KERNELS = {"blocked": lsg_blocked_attention, "fast": ATTENTION_VARIANTS.get("lsg_fast"), "flex": eager_flex}


def causal_settings(sparsity_type: str, block_size: int = 8, globals_: int = 2, factor: int = 2) -> LSGSettings:
    return LSGSettings(
        block_size=block_size,
        sparse_block_size=block_size,
        sparsity_factor=factor,
        sparsity_type=sparsity_type,
        num_global_tokens=globals_,
    )


def inputs(
    tokens: int,
    globals_: int,
    *,
    left_pad: int = 0,
    right_pad: int = 0,
    heads: int = 3,
    dim: int = 8,
    dtype=torch.float32,
):
    q, k, v = (torch.randn(2, heads, globals_ + tokens, dim, dtype=dtype) for _ in range(3))
    valid = torch.ones(2, tokens, dtype=torch.bool)
    valid[0, tokens - right_pad :] = False
    valid[1, :left_pad] = False  # generation batches pad on the left
    return q, k, v, valid


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("tokens", [13, 61, 96])
def test_every_selector_matches_the_causal_reference(kernel, sparsity_type, tokens):
    settings = causal_settings(sparsity_type)
    q, k, v, valid = inputs(tokens, 2, left_pad=11, right_pad=5)
    expected = reference_lsg_attention(q, k, v, valid, settings, scaling=0.3, causal=True)
    out = KERNELS[kernel](q, k, v, valid, settings, scaling=0.3, causal=True)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sparsity_type=st.sampled_from(SPARSITY_TYPES),
    block_size=st.integers(1, 10),
    factor_index=st.integers(0, 4),
    sparse_block_size=st.integers(0, 12),
    globals_=st.integers(1, 3),
    tokens=st.integers(1, 60),
    left_pad=st.integers(0, 20),
    right_pad=st.integers(0, 20),
)
def test_kernels_match_the_reference_for_any_shape(
    sparsity_type, block_size, factor_index, sparse_block_size, globals_, tokens, left_pad, right_pad
):
    divisors = [d for d in range(1, block_size + 1) if block_size % d == 0]
    if sparsity_type in ("norm", "lsh"):
        sparse_block_size = max(sparse_block_size, block_size)
    settings = LSGSettings(
        block_size=block_size,
        sparse_block_size=sparse_block_size,
        sparsity_factor=divisors[factor_index % len(divisors)],
        sparsity_type=sparsity_type,
        num_global_tokens=globals_,
    )
    q, k, v, valid = inputs(tokens, globals_, left_pad=min(left_pad, tokens), right_pad=min(right_pad, tokens), heads=2)
    expected = reference_lsg_attention(q, k, v, valid, settings, scaling=0.3, causal=True)
    for kernel in (lsg_blocked_attention, ATTENTION_VARIANTS.get("lsg_fast")):
        torch.testing.assert_close(
            kernel(q, k, v, valid, settings, scaling=0.3, causal=True), expected, atol=3e-6, rtol=0
        )


@pytest.mark.parametrize("length", [12, 40])
def test_reference_visibility_is_the_causal_rule(length):
    """Written out by brute force: no later token, globals see globals only, the left sparse window only, and a
    sparse entry is seen only when every token of the block it summarises is earlier than the previous block."""
    settings = causal_settings("pooling", block_size=4, globals_=2, factor=2)
    G, bs, r = 2, 4, settings.sparse_per_block
    dense, sparse = reference_visibility(length, settings, causal=True)
    assert dense[:G, :G].all() and not dense[:G, G:].any()
    assert dense[:, :G].all()
    tokens = dense[G:, G:]
    later = torch.ones(length, length, dtype=torch.bool).triu(1)
    assert not (tokens & later).any()
    if length <= 2 * bs:
        assert tokens.equal(~later)
        return
    for i in range(length):
        for e in range(sparse.shape[1]):
            if sparse[G + i, e]:
                assert (e // r + 1) * bs <= (i // bs - 1) * bs  # the summarised block ends before block j-1
    queries, keys = torch.arange(length)[:, None], torch.arange(length)[None]
    assert tokens.equal(sees_local(queries, keys, bs, causal=True))
    assert sparse[G:].equal(sees_sparse(queries, torch.arange(sparse.shape[1])[None], settings, causal=True))


def test_causal_local_rows_see_the_previous_block_and_the_own_block_up_to_the_query():
    rows = causal_local_rows(3)
    assert rows.tolist() == [[True] * 4 + [False] * 5, [True] * 5 + [False] * 4, [True] * 6 + [False] * 3]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sparsity_type=st.sampled_from(SPARSITY_TYPES),
    tokens=st.integers(2, 70),
    position=st.integers(1, 69),
    flip_validity=st.booleans(),
    kernel=st.sampled_from(["blocked", "fast"]),
    left_pad=st.integers(0, 9),
)
def test_no_output_depends_on_a_later_token(sparsity_type, tokens, position, flip_validity, kernel, left_pad):
    """I6: changing token t (its query, key, value, or whether it is padding) leaves every output before t
    unchanged, the global rows' included."""
    position = position % tokens
    settings = causal_settings(sparsity_type, block_size=4, globals_=2)
    q, k, v, valid = inputs(tokens, 2, left_pad=min(left_pad, tokens))
    run = functools.partial(KERNELS[kernel], settings=settings, scaling=0.3, causal=True)
    before = run(q, k, v, valid)
    changed = [x.clone() for x in (q, k, v)]
    for x in changed:
        x[:, :, 2 + position :] = torch.randn_like(x[:, :, 2 + position :]) * 3
    valid2 = valid.clone()
    if flip_validity:
        valid2[:, position:] = ~valid2[:, position:]
    after = run(*changed, valid2)
    torch.testing.assert_close(after[:, :, : 2 + position], before[:, :, : 2 + position], atol=1e-6, rtol=0)


@pytest.mark.parametrize("core", ["flash", "matmul"])
@pytest.mark.parametrize("sparsity_type", ["bos_pooling", "norm", "none"])
def test_fast_kernel_gradients_match_the_plain_path(core, sparsity_type, monkeypatch):
    monkeypatch.setattr(fast, "GATHER_BUDGET", 1)  # one block per chunk: the chunk edges are exercised
    settings = causal_settings(sparsity_type)
    q, k, v, valid = (
        x.double().requires_grad_() if x.is_floating_point() else x for x in inputs(53, 2, left_pad=10, right_pad=4)
    )
    chosen = None if core == "flash" else fast.MatmulCore(0.3)
    kernel = functools.partial(fast.fast_attention, core=chosen)
    weights = torch.randn(2, 3, 55, 8, dtype=torch.float64)
    grads = []
    for run in (
        lambda: lsg_layer(
            q,
            k,
            v,
            valid,
            settings,
            scaling=0.3,
            dropout=0.0,
            training=False,
            layer_index=0,
            kernel=kernel,
            causal=True,
        ),
        lambda: lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3, causal=True),
    ):
        grads.append(torch.autograd.grad((run() * weights).sum(), (q, k, v)))
    for fast_grad, plain_grad in zip(*grads, strict=True):
        torch.testing.assert_close(fast_grad, plain_grad, atol=1e-10, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("sparsity_type", ["pooling", "none"])
def test_compiled_flex_forward_matches_the_reference(sparsity_type):
    """The registered "lsg_flex" (compiled; forward only on CPU) in its causal form."""
    settings = LSGSettings(
        block_size=128, sparse_block_size=128, sparsity_factor=4, sparsity_type=sparsity_type, num_global_tokens=2
    )
    q, k, v, valid = inputs(700, 2, heads=2, dim=16, left_pad=30, right_pad=50)
    out = ATTENTION_VARIANTS.get("lsg_flex")(q, k, v, valid, settings, scaling=0.25, causal=True)
    expected = lsg_blocked_attention(q, k, v, valid, settings, scaling=0.25, causal=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
