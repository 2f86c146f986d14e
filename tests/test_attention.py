"""The plain LSG kernel ("lsg_blocked") against the dense reference and the invariants (design §6: I1, I2, I4,
I5, I7, I8, I11, I12). The fast paths are checked against both in test_fast_kernel.py."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsg.attention import lsg_blocked_attention
from lsg.reference import reference_lsg_attention, reference_visibility
from lsg.settings import SPARSITY_TYPES, LSGSettings

SPARSE_TYPES = [t for t in SPARSITY_TYPES if t != "none"]


def random_qkv(batch: int, heads: int, tokens: int, globals_: int, dim: int = 8, dtype=torch.float32):
    return tuple(torch.randn(batch, heads, globals_ + tokens, dim, dtype=dtype) for _ in range(3))


def padded_validity(batch: int, tokens: int, pad: int) -> torch.Tensor:
    valid = torch.ones(batch, tokens, dtype=torch.bool)
    if pad:
        valid[-1, tokens - pad:] = False
    return valid


def run_both(settings: LSGSettings, tokens: int, pad: int = 0, batch: int = 2, heads: int = 3, dim: int = 8):
    q, k, v = random_qkv(batch, heads, tokens, settings.num_global_tokens, dim)
    valid = padded_validity(batch, tokens, pad)
    scale = dim**-0.5
    plain = lsg_blocked_attention(q, k, v, valid, settings, scaling=scale)
    return plain, reference_lsg_attention(q, k, v, valid, settings, scaling=scale)


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("tokens", [7, 97, 130, 257])
@pytest.mark.parametrize("pad", [0, 11])
def test_kernel_matches_dense_reference(sparsity_type, tokens, pad):
    settings = LSGSettings(block_size=16, sparse_block_size=16, sparsity_factor=4, sparsity_type=sparsity_type,
                           num_global_tokens=2)
    fast, reference = run_both(settings, tokens, pad=min(pad, tokens - 1))
    torch.testing.assert_close(fast, reference, atol=2e-6, rtol=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sparsity_type=st.sampled_from(SPARSITY_TYPES),
    block_size=st.integers(1, 12),
    sparse_block_size=st.integers(0, 13),
    factor_index=st.integers(0, 5),
    globals_=st.integers(1, 4),
    tokens=st.integers(1, 70),
    pad=st.integers(0, 20),
)
def test_kernel_matches_reference_for_any_shape(sparsity_type, block_size, sparse_block_size, factor_index, globals_,
                                                tokens, pad):
    """Odd block sizes, odd r = bs/f, r == 1, sbs not a multiple of r, sbs == 0: all equal the reference."""
    divisors = [d for d in range(1, block_size + 1) if block_size % d == 0]
    factor = divisors[factor_index % len(divisors)]
    if sparsity_type in ("norm", "lsh") and sparse_block_size < block_size:
        sparse_block_size = block_size  # smaller chunks are validated separately (test_settings)
    settings = LSGSettings(block_size=block_size, sparse_block_size=sparse_block_size, sparsity_factor=factor,
                           sparsity_type=sparsity_type, num_global_tokens=globals_)
    fast, reference = run_both(settings, tokens, pad=min(pad, tokens - 1), heads=2)
    torch.testing.assert_close(fast, reference, atol=3e-6, rtol=0)


def test_short_sequences_are_dense_attention_over_globals_and_tokens():
    """I1: T <= 2*bs is plain softmax attention over the G + T keys, whatever the sparsity type."""
    settings = LSGSettings(block_size=32, sparsity_type="lsh", num_global_tokens=3)
    q, k, v = random_qkv(2, 4, 64, 3)
    valid = padded_validity(2, 64, 10)
    mask = torch.cat([torch.ones(2, 3, dtype=torch.bool), valid], 1)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    dense = scores.masked_fill(~mask[:, None, None], float("-inf")).softmax(-1) @ v
    out = lsg_blocked_attention(q, k, v, valid, settings, scaling=8**-0.5)
    torch.testing.assert_close(out, dense, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sparsity_type", ["none", "stride", "pooling", "norm"])
def test_keys_per_query_match_the_formula(sparsity_type):
    """I7: with zero queries every visible key weighs 1/K; a single global value of 1 reads K back."""
    settings = LSGSettings(block_size=8, sparse_block_size=6 if sparsity_type != "norm" else 8, sparsity_factor=2,
                           sparsity_type=sparsity_type,
                           num_global_tokens=1)
    tokens = 96
    q = torch.zeros(1, 1, 1 + tokens, 4)
    k = torch.randn(1, 1, 1 + tokens, 4)
    v = torch.zeros(1, 1, 1 + tokens, 4)
    v[:, :, 0] = 1.0
    out = lsg_blocked_attention(q, k, v, torch.ones(1, tokens, dtype=torch.bool), settings, scaling=1.0)
    counted = (1 / out[0, 0, 1:, 0]).round().long()
    dense, sparse = reference_visibility(tokens, settings)
    expected = dense[1:].sum(1) + sparse[1:].sum(1)
    assert torch.equal(counted, expected)
    interior = counted[3 * 8 : tokens - 3 * 8]  # blocks whose windows are fully inside the sequence
    assert (interior == settings.keys_per_query()).all()


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_appending_padding_leaves_real_tokens_unchanged(sparsity_type):
    """I4 (bos_pooling included, defect D4): extra padding changes nothing for real tokens."""
    settings = LSGSettings(block_size=8, sparse_block_size=8, sparsity_factor=4, sparsity_type=sparsity_type,
                           num_global_tokens=2)
    q, k, v = random_qkv(2, 3, 53, 2)
    valid = torch.ones(2, 53, dtype=torch.bool)
    base = lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3)
    extra = 37
    q2, k2, v2 = (torch.cat([x, 50 * torch.randn(2, 3, extra, 8)], 2) for x in (q, k, v))
    valid2 = torch.cat([valid, torch.zeros(2, extra, dtype=torch.bool)], 1)
    longer = lsg_blocked_attention(q2, k2, v2, valid2, settings, scaling=0.3)
    torch.testing.assert_close(longer[:, :, : 2 + 53], base, atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_half_precision_error_within_twice_plain_low_precision(dtype, sparsity_type):
    """I11 (defect D5): in fp16/bf16 the kernel errs at most ~2x what a plain low-precision implementation errs."""
    settings = LSGSettings(block_size=16, sparse_block_size=16, sparsity_factor=4, sparsity_type=sparsity_type,
                           num_global_tokens=1)
    q, k, v = random_qkv(2, 2, 150, 1, dim=16)
    valid = padded_validity(2, 150, 20)
    valid[0] = False  # one fully padded row must still give finite outputs
    truth = reference_lsg_attention(q, k, v, valid, settings, scaling=0.25)
    low = [x.to(dtype) for x in (q, k, v)]
    fast = lsg_blocked_attention(*low, valid, settings, scaling=0.25)
    plain = reference_lsg_attention(*low, valid, settings, scaling=0.25, compute_dtype=dtype)
    assert fast.dtype == dtype and torch.isfinite(fast).all()
    fast_error = (fast.double() - truth.double()).abs().max()
    plain_error = (plain.double() - truth.double()).abs().max()
    assert fast_error <= 2 * plain_error + 1e-3, (fast_error, plain_error)


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_gradients_match_finite_differences(sparsity_type):
    settings = LSGSettings(block_size=4, sparse_block_size=4, sparsity_factor=2, sparsity_type=sparsity_type,
                           num_global_tokens=1)
    q, k, v = (x.double().requires_grad_() for x in random_qkv(1, 2, 19, 1, dim=4))
    valid = padded_validity(1, 19, 3)
    assert torch.autograd.gradcheck(lambda a, b, c: lsg_blocked_attention(a, b, c, valid, settings, scaling=0.5),
                                    (q, k, v))


def test_tokens_outside_every_window_do_not_matter():
    """I5: a key/value outside a query's local window and both sparse windows cannot change its output."""
    settings = LSGSettings(block_size=8, sparse_block_size=4, sparsity_factor=2, sparsity_type="pooling",
                           num_global_tokens=1)
    q, k, v = random_qkv(1, 2, 128, 1)
    valid = torch.ones(1, 128, dtype=torch.bool)
    base = lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3)
    dense, sparse = reference_visibility(128, settings)
    query = 1 + 60  # token 60, block 7
    f = settings.sparsity_factor
    seen = set(torch.nonzero(dense[query, 1:]).flatten().tolist())
    for s in torch.nonzero(sparse[query]).flatten().tolist():
        seen.update(range(s * f, (s + 1) * f))
    unseen = [t for t in range(128) if t not in seen]
    assert unseen, "the test needs tokens outside the windows"
    k2, v2 = k.clone(), v.clone()
    k2[:, :, [1 + t for t in unseen]] += 10
    v2[:, :, [1 + t for t in unseen]] += 10
    moved = lsg_blocked_attention(q, k2, v2, valid, settings, scaling=0.3)
    torch.testing.assert_close(moved[:, :, query], base[:, :, query], atol=1e-6, rtol=0)
    assert not torch.allclose(moved[:, :, 0], base[:, :, 0]), "global queries see every token"


def test_batch_permutation_is_equivariant():
    settings = LSGSettings(block_size=8, sparsity_type="norm", sparse_block_size=8, num_global_tokens=2)
    q, k, v = random_qkv(3, 2, 70, 2)
    valid = padded_validity(3, 70, 9)
    out = lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3)
    perm = torch.tensor([2, 0, 1])
    permuted = lsg_blocked_attention(q[perm], k[perm], v[perm], valid[perm], settings, scaling=0.3)
    torch.testing.assert_close(permuted, out[perm], atol=1e-6, rtol=0)


def test_sparsity_factor_one_is_the_same_for_every_type():
    """I8: f == 1 keeps every token, so all selectors agree; none == sbs 0 == f 0 (local only)."""
    q, k, v = random_qkv(1, 2, 90, 1)
    valid = padded_validity(1, 90, 5)
    outs = [lsg_blocked_attention(q, k, v, valid, LSGSettings(block_size=8, sparse_block_size=8, sparsity_factor=1,
                                                      sparsity_type=t), scaling=0.3) for t in SPARSE_TYPES]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-6, rtol=0)
    local = [LSGSettings(block_size=8, sparsity_type=None), LSGSettings(block_size=8, sparse_block_size=0),
             LSGSettings(block_size=8, sparsity_factor=0)]
    outs = [lsg_blocked_attention(q, k, v, valid, s, scaling=0.3) for s in local]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=0, rtol=0)


def test_dropout_is_applied_only_in_training():
    settings = LSGSettings(block_size=8, sparse_block_size=8, num_global_tokens=1)
    q, k, v = random_qkv(1, 2, 50, 1)
    valid = torch.ones(1, 50, dtype=torch.bool)
    evaluation = lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3, dropout=0.5, training=False)
    torch.testing.assert_close(evaluation, lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3))
    trained = lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3, dropout=0.5, training=True)
    assert not torch.allclose(trained, evaluation)


@pytest.mark.parametrize("tokens", [17, 24])
def test_norm_window_ending_inside_a_chunk_takes_the_keys_in_sequence_order(tokens):
    """sbs = 5 with B'/f = 2 kept keys per chunk: each sparse window ends halfway through a chunk's kept keys, so the
    kernel must order them as the reference does (by position). Ordered by score, 19 of 20 seeds disagreed."""
    settings = LSGSettings(block_size=4, sparse_block_size=5, sparsity_factor=2, sparsity_type="norm",
                           num_global_tokens=2)
    for seed in range(5):
        torch.manual_seed(seed)
        fast, reference = run_both(settings, tokens, pad=5, heads=2)
        torch.testing.assert_close(fast, reference, atol=3e-6, rtol=0)


@pytest.mark.parametrize("sparsity_type", SPARSE_TYPES)
def test_selectors_that_pick_tokens_say_which(sparsity_type):
    """`SparseTokens.index` (what the fast kernel's backward scatters gradients by) names exactly the tokens a
    picking selector returned; selectors that mix tokens leave it None."""
    from lsg.selectors import SelectorInputs, select_sparse_tokens

    settings = LSGSettings(block_size=16, sparse_block_size=16, sparsity_factor=4, sparsity_type=sparsity_type)
    keys, values = torch.randn(2, 3, 64, 8), torch.randn(2, 3, 64, 8)
    valid = padded_validity(2, 64, 5)
    sparse = select_sparse_tokens(SelectorInputs(keys, values, valid, keys[:, :, 0], 8**-0.5, settings))
    if sparsity_type not in ("stride", "block_stride", "norm"):
        assert sparse.index is None
        return
    assert sparse.index.shape == sparse.keys.shape[:3]
    pick = sparse.index.unsqueeze(-1).expand_as(sparse.keys)
    assert torch.equal(sparse.keys, keys.gather(2, pick)) and torch.equal(sparse.values, values.gather(2, pick))
    assert torch.equal(sparse.valid.expand_as(sparse.index), valid[:, None].expand(2, 3, 64).gather(2, sparse.index))
