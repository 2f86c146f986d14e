"""Table-1 attentions: each against its defining formula (float64, written plainly), padding, bf16, in a model."""

import copy
import math

import pytest
import torch
import transformers
from conftest import tiny_config_kwargs
from transformers import BertConfig, RobertaConfig

import lsg
import lsg.baselines as baselines
from lsg.baselines.attentions import LinformerAttention, LocalAttention, PerformerAttention
from lsg.baselines.reformer import ReformerAttention
from lsg.settings import LSGSettings

SETTINGS = LSGSettings()  # G = 1: the leading row is an ordinary, always-valid token for these variants
SCALING = 8**-0.5


def inputs(length=21, batch=2, heads=3, dim=8, pad=5, dtype=torch.float64):
    """q, k, v (B, H, L, D) and token validity (B, L-1): row 0 plays the always-valid global row."""
    q, k, v = (torch.randn(batch, heads, length, dim, dtype=dtype) for _ in range(3))
    valid = torch.ones(batch, length - 1, dtype=torch.bool)
    valid[-1, length - 1 - pad:] = False
    return q, k, v, valid


def call(variant, q, k, v, valid, layer_index=0):
    fn = lsg.ATTENTION_VARIANTS.get(baselines.attention_name(variant)) if isinstance(variant, str) else variant
    return fn(q, k, v, valid, SETTINGS, scaling=SCALING, layer_index=layer_index)


def all_valid(valid):
    return torch.cat([torch.ones(valid.shape[0], 1, dtype=torch.bool), valid], dim=1)


# --- brute force, one query at a time -------------------------------------------------------------------------

def softmax_rows(q, k, v, keys_of):
    """out[b, h, i] = softmax_j in keys_of(b, h, i) (scaling q_i.k_j) v_j."""
    out = torch.zeros_like(q)
    B, H, L, _ = q.shape
    for b in range(B):
        for h in range(H):
            for i in range(L):
                js = keys_of(b, h, i)
                weights = torch.softmax(SCALING * k[b, h, js] @ q[b, h, i], dim=0)
                out[b, h, i] = weights @ v[b, h, js]
    return out


def kernel_rows(phi_q, phi_k, v, valid):
    """out[b, h, i] = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j) over valid j."""
    out = torch.zeros(*phi_q.shape[:3], v.shape[-1], dtype=v.dtype)
    for b in range(phi_q.shape[0]):
        js = valid[b].nonzero().flatten()
        for h in range(phi_q.shape[1]):
            for i in range(phi_q.shape[2]):
                a = phi_k[b, h, js] @ phi_q[b, h, i]
                out[b, h, i] = a @ v[b, h, js] / a.sum()
    return out


def test_full_is_softmax_over_valid_keys():
    q, k, v, valid = inputs()
    rows = all_valid(valid)
    expected = softmax_rows(q, k, v, lambda b, h, i: rows[b].nonzero().flatten())
    torch.testing.assert_close(call("full", q, k, v, valid), expected, atol=1e-12, rtol=0)


def test_linear_is_elu_plus_one_kernel():
    q, k, v, valid = inputs()
    expected = kernel_rows(torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1, v, all_valid(valid))
    torch.testing.assert_close(call("linear", q, k, v, valid), expected, atol=1e-12, rtol=0)


def test_efficient_is_softmax_q_times_softmax_k_context():
    q, k, v, valid = inputs()
    rows = all_valid(valid)
    expected = torch.zeros_like(q)
    for b in range(q.shape[0]):
        js = rows[b].nonzero().flatten()
        for h in range(q.shape[1]):
            context = torch.softmax(k[b, h, js], dim=0).T @ v[b, h, js]  # (D, D): feature f -> value mean
            for i in range(q.shape[2]):
                expected[b, h, i] = torch.softmax(q[b, h, i], dim=0) @ context
    torch.testing.assert_close(call("efficient", q, k, v, valid), expected, atol=1e-12, rtol=0)


def test_performer_is_favor_plus_with_its_seeded_features():
    q, k, v, valid = inputs()
    attention = PerformerAttention(num_features=64, seed=3)
    w = attention.features(q.shape[-1], layer_index=2)

    def phi(x):
        x = x * SCALING**0.5
        return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(64)

    expected = kernel_rows(phi(q), phi(k), v, all_valid(valid))
    torch.testing.assert_close(call(attention, q, k, v, valid, layer_index=2), expected, atol=1e-10, rtol=1e-9)


def test_performer_features_are_orthogonal_seeded_and_per_layer():
    attention = PerformerAttention(num_features=16, seed=0)
    w = attention.features(8, 0)
    block = w[:8] / w[:8].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(8, dtype=w.dtype), atol=1e-12, rtol=0)
    assert torch.equal(w, PerformerAttention(num_features=16, seed=0).features(8, 0))
    assert not torch.equal(w, attention.features(8, 1)) and not torch.equal(w, PerformerAttention(16, 1).features(8, 0))


def test_performer_approximates_softmax_with_many_features():
    q, k, v, valid = (x[:1] for x in inputs(pad=0))
    q, k = q / 2, k / 2  # FAVOR+'s variance grows like exp(|q|^2 + |k|^2): keep the logits moderate
    exact = call("full", q, k, v, valid)
    few = (call(PerformerAttention(num_features=16), q, k, v, valid) - exact).abs().mean()
    many = (call(PerformerAttention(num_features=1024), q, k, v, valid) - exact).abs().mean()
    assert many < 0.1 * exact.abs().mean() and many < 0.5 * few


def test_linformer_projects_keys_and_values_along_length():
    q, k, v, valid = inputs()
    attention = LinformerAttention(projection_dim=4, seed=1)
    e, f = attention.projections(q.shape[2], layer_index=1)
    rows = all_valid(valid)
    expected = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            keys = sum(e[:, j, None] * k[b, h, j] for j in range(q.shape[2]) if rows[b, j])  # (k, D)
            values = sum(f[:, j, None] * v[b, h, j] for j in range(q.shape[2]) if rows[b, j])
            for i in range(q.shape[2]):
                expected[b, h, i] = torch.softmax(SCALING * keys @ q[b, h, i], dim=0) @ values
    torch.testing.assert_close(call(attention, q, k, v, valid, layer_index=1), expected, atol=1e-12, rtol=0)
    assert e.shape == (4, q.shape[2]) and abs(e.var().item() - 1 / 4) < 0.15  # N(0, 1/k)
    assert torch.equal(attention.projections(300, 1)[0][:, : q.shape[2]], e)  # column j depends on j only


def test_local_sees_neighbouring_blocks_only():
    q, k, v, valid = inputs(length=23)
    rows = all_valid(valid)
    bs = 4

    def keys_of(b, h, i):
        return [j for j in range(q.shape[2]) if rows[b, j] and abs(i // bs - j // bs) <= 1]

    expected = softmax_rows(q, k, v, keys_of)
    torch.testing.assert_close(call(LocalAttention(block_size=bs), q, k, v, valid), expected, atol=1e-12, rtol=0)


def reformer_reference(attention, q, v, valid):
    """Kitaev et al. §2 one query at a time: buckets, stable sort, chunks, own + previous chunk, shared QK."""
    B, H, L, D = q.shape
    c, R = attention.chunk_size, attention.num_hashes
    rows = all_valid(valid)
    rotation = attention.rotations(H, D, L, layer_index=0)
    keys = q / q.norm(dim=-1, keepdim=True)
    outs, lses = torch.zeros(R, B, H, L, D, dtype=q.dtype), torch.zeros(R, B, H, L, dtype=q.dtype)
    for r in range(R):
        for b in range(B):
            for h in range(H):
                projected = q[b, h] @ rotation[r, h]
                bucket = torch.cat([projected, -projected], dim=-1).argmax(-1).tolist()
                real = [i for i in range(L) if rows[b, i]]
                order = sorted(real, key=lambda i: (bucket[i], i)) + [i for i in range(L) if not rows[b, i]]
                chunk = {i: n // c for n, i in enumerate(order)}
                for i in real:
                    near = [j for j in real if chunk[j] in (chunk[i], chunk[i] - 1)]
                    others = [j for j in near if j != i] or [i]
                    scores = SCALING * keys[b, h, others] @ q[b, h, i]
                    lses[r, b, h, i] = torch.logsumexp(scores, 0)
                    outs[r, b, h, i] = torch.softmax(scores, 0) @ v[b, h, others]
    return (torch.softmax(lses, dim=0)[..., None] * outs).sum(0)


@pytest.mark.parametrize("num_hashes", [1, 3])
def test_reformer_is_shared_qk_lsh_over_sorted_chunks(num_hashes):
    q, k, v, valid = inputs(length=29)
    attention = ReformerAttention(chunk_size=4, num_buckets=6, num_hashes=num_hashes, seed=5)
    out = call(attention, q, k, v, valid)
    expected = reformer_reference(attention, q, v, valid)
    real = all_valid(valid)[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], expected[real], atol=1e-12, rtol=0)


def test_reformer_default_bucket_count_follows_kitaev():
    attention = ReformerAttention()
    assert [attention.bucket_count(n) for n in (10, 128, 512, 4096, 4097)] == [2, 2, 8, 64, 66]


VARIANTS = {
    "full": "full", "linear": "linear", "efficient": "efficient", "performer": PerformerAttention(num_features=32),
    "linformer": LinformerAttention(projection_dim=6), "local": LocalAttention(block_size=4),
    "reformer": ReformerAttention(chunk_size=4, num_buckets=4, num_hashes=2),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_keys_do_not_change_real_outputs(name):
    q, k, v, valid = inputs(length=21, batch=1, pad=0)
    extra = 7
    padded = [torch.cat([x, torch.randn(*x.shape[:2], extra, x.shape[3], dtype=x.dtype) * 5], dim=2) for x in (q, k, v)]
    padded_valid = torch.cat([valid, torch.zeros(1, extra, dtype=torch.bool)], dim=1)
    alone = call(VARIANTS[name], q, k, v, valid)
    in_batch = call(VARIANTS[name], *padded, padded_valid)
    torch.testing.assert_close(in_batch[:, :, : q.shape[2]], alone, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_is_finite_and_close_to_float32(name):
    q, k, v, valid = inputs(length=37, dtype=torch.float32)
    valid[0] = False  # a batch row with no valid token besides the leading row
    exact = call(VARIANTS[name], q, k, v, valid)
    low = call(VARIANTS[name], *(x.bfloat16() for x in (q, k, v)), valid)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    if name != "reformer":  # bucket choices may flip in bf16: a different (still valid) key set
        assert (low.float() - exact).abs().max() < 0.1


# --- in a model --------------------------------------------------------------------------------------------------

def tiny(family="roberta"):
    if family == "bert":
        return transformers.BertForMaskedLM(BertConfig(**tiny_config_kwargs())).eval()
    config = RobertaConfig(**tiny_config_kwargs(max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                                eos_token_id=2, type_vocab_size=1))
    return transformers.RobertaForMaskedLM(config).eval()


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_full_variant_in_a_model_equals_sdpa(family):
    model = tiny(family)
    ids = torch.randint(5, 99, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        swapped = baselines.swap_attention(copy.deepcopy(model), "full")
        assert swapped.config._attn_implementation == "table1_full"
        actual = swapped(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", baselines.TABLE1_ATTENTIONS)
def test_every_variant_runs_in_a_model_and_ignores_padding(name):
    params = {"reformer": {"num_buckets": 4, "chunk_size": 8}, "local": {"block_size": 8}}.get(name, {})
    model = baselines.swap_attention(tiny(), name, **params)
    ids = torch.randint(5, 99, (1, 40))
    with torch.no_grad():
        alone = model(input_ids=ids).logits
        padded = torch.cat([ids, torch.full((1, 13), 1)], dim=1)
        mask = torch.cat([torch.ones(1, 40), torch.zeros(1, 13)], dim=1).long()
        in_batch = model(input_ids=padded, attention_mask=mask).logits
    assert torch.isfinite(in_batch).all()
    torch.testing.assert_close(in_batch[:, :40], alone, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["full", "linear", "performer"])
def test_left_padding_works_on_a_plain_model(name):
    """A plain model has no global rows: every row, the first included, takes its validity from the mask."""
    model = baselines.swap_attention(tiny(), name)
    ids = torch.randint(5, 99, (1, 10))
    padded = torch.cat([torch.full((1, 3), 1), ids], dim=1)  # RoBERTa's pad id: positions skip it
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], dim=1).long()
    with torch.no_grad():
        alone = model(input_ids=ids).logits
        left = model(input_ids=padded, attention_mask=mask).logits
    torch.testing.assert_close(left[:, 3:], alone, atol=2e-5, rtol=0)


def test_parameters_make_a_named_variant_once():
    assert baselines.attention_name("performer") == "table1_performer"
    assert baselines.attention_name("performer", num_features=256) == "table1_performer"  # default: canonical name
    name = baselines.attention_name("reformer", num_hashes=2, chunk_size=32)
    assert name == "table1_reformer:chunk_size=32,num_hashes=2" and name in lsg.ATTENTION_VARIANTS
    assert baselines.attention_name("reformer", chunk_size=32, num_hashes=2) == name
    model = baselines.swap_attention(tiny(), "reformer", chunk_size=32, num_hashes=2)
    assert model.config._attn_implementation == name


@pytest.mark.parametrize(("name", "params", "message"), [
    ("longformer", {}, "not a Table-1 attention"),
    ("linear", {"num_features": 3}, "takes no parameter"),
    ("performer", {"features": 3}, "accepted: \\['num_features', 'seed'\\]"),
    ("performer", {"num_features": 0}, "num_features=0"),
    ("linformer", {"projection_dim": -1}, "projection_dim=-1"),
    ("reformer", {"num_buckets": 5}, "num_buckets=5 must be even"),
    ("local", {"block_size": 1.5}, "block_size=1.5"),
])
def test_bad_parameters_raise(name, params, message):
    with pytest.raises(ValueError, match=message):
        baselines.attention_name(name, **params)


def test_tiled_positions_extend_a_plain_model():
    model = tiny()
    long = baselines.tile_model_positions(model, 256)
    old = model.roberta.embeddings.position_embeddings.weight
    new = long.roberta.embeddings.position_embeddings.weight
    assert new.shape[0] == 258 == long.config.max_position_embeddings
    torch.testing.assert_close(new[2:], old[2 + torch.arange(256) % 64], atol=0, rtol=0)
    ids = torch.randint(5, 99, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(long(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)
        out = baselines.swap_attention(long, "local", block_size=16)(input_ids=torch.randint(5, 99, (1, 200))).logits
    assert out.shape == (1, 200, 99) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="max_length=32"):
        baselines.tile_model_positions(model, 32)
