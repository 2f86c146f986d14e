"""The fast paths ("lsg_fast", "lsg_flex" and "lsg", which picks one) against the dense reference and the plain
path ("lsg_blocked"): outputs, gradients, half precision, chunking, dropout, memory and whole models."""

import functools
import types
import warnings

import pytest
import torch
import transformers
from conftest import tiny_config_kwargs
from torch._dynamo.testing import CompileCounter
from torch.nn.attention.flex_attention import flex_attention
from transformers import RobertaConfig

import lsg
import lsg.fast as fast
import lsg.flex
from lsg.attention import KeyLayout, lsg_blocked_attention, lsg_layer
from lsg.dropout import CounterDropout
from lsg.flex import flex_attention_kernel, flex_length, lsg_block_mask, lsg_mask_mod
from lsg.memory import PeakMemory
from lsg.reference import reference_lsg_attention
from lsg.settings import SPARSITY_TYPES, LSGSettings
from lsg.variants import ATTENTION_VARIANTS, default_variant_name

FAST = ["lsg_fast", "lsg"]


def random_inputs(tokens: int, globals_: int, *, batch: int = 2, heads: int = 3, dim: int = 8, pad: int = 0,
                  dtype: torch.dtype = torch.float32):
    q, k, v = (torch.randn(batch, heads, globals_ + tokens, dim, dtype=dtype) for _ in range(3))
    valid = torch.ones(batch, tokens, dtype=torch.bool)
    valid[-1, tokens - pad:] = False
    return q, k, v, valid


def settings_for(sparsity_type: str, globals_: int = 1, block_size: int = 16) -> LSGSettings:
    return LSGSettings(block_size=block_size, sparse_block_size=block_size, sparsity_factor=4,
                       sparsity_type=sparsity_type, num_global_tokens=globals_)


def run_kernel(kernel, q, k, v, valid, settings, scaling=0.3, dropout=0.0, training=False):
    """Any token kernel inside the shared LSG layer (short rule, padding, globals, selectors)."""
    return lsg_layer(q, k, v, valid, settings, scaling=scaling, dropout=dropout, training=training, layer_index=0,
                     kernel=kernel)


@pytest.mark.parametrize("variant", FAST)
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize(("tokens", "globals_"), [(7, 7), (97, 1), (130, 7), (257, 1)])
@pytest.mark.parametrize("pad", [0, 11])
def test_fast_matches_reference_and_plain(variant, sparsity_type, tokens, globals_, pad):
    settings = settings_for(sparsity_type, globals_)
    q, k, v, valid = random_inputs(tokens, globals_, pad=min(pad, tokens - 1))
    out = ATTENTION_VARIANTS.get(variant)(q, k, v, valid, settings, scaling=0.3)
    torch.testing.assert_close(out, reference_lsg_attention(q, k, v, valid, settings, scaling=0.3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3), atol=1e-5, rtol=0)


CORES = {
    "flash": None,  # the default on CPU without dropout
    "matmul": lambda: fast.MatmulCore(0.3),
}


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize(("globals_", "one_block_chunks"), [(1, False), (7, True)])
@pytest.mark.parametrize("pad", [9, 60])
def test_gradients_match_the_plain_path(core, sparsity_type, globals_, one_block_chunks, pad, monkeypatch):
    """fwd+bwd in float64: every input gradient equals autograd through the plain path, one chunk or many. With
    60 of 101 tokens padded, some blocks' local windows are all padding (they see only remote keys)."""
    if one_block_chunks:
        monkeypatch.setattr(fast, "GATHER_BUDGET", 1)
    settings = settings_for(sparsity_type, globals_, block_size=8)
    q, k, v, valid = (x.double().requires_grad_() if x.is_floating_point() else x
                      for x in random_inputs(101, globals_, pad=pad))
    make_core = CORES[core]
    kernel = functools.partial(fast.fast_attention, core=make_core() if make_core else None)
    weights = torch.randn(2, 3, globals_ + 101, 8, dtype=torch.float64)
    out = run_kernel(kernel, q, k, v, valid, settings)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    plain = lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3)
    expected = torch.autograd.grad((plain * weights).sum(), (q, k, v))
    torch.testing.assert_close(out, plain, atol=1e-12, rtol=0)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_dropout_gradients_are_exact():
    """With a fixed seed the dropped-out kernel is a deterministic function: its backward passes gradcheck."""
    settings = LSGSettings(block_size=4, sparse_block_size=4, sparsity_factor=2, sparsity_type="pooling")
    q, k, v, valid = random_inputs(20, 1, batch=1, heads=1, dim=4, pad=3, dtype=torch.float64)

    layout = KeyLayout(valid, settings, scaling=0.5, layer_index=0, training=True)

    def token_outputs(query, key, value):
        return fast.fast_attention(query, key, value, layout, 0.3,
                                   core=fast.MatmulCore(0.5, CounterDropout(0.3, seed=7)))

    assert torch.autograd.gradcheck(token_outputs, tuple(x.requires_grad_() for x in (q, k, v)))


def test_dropout_is_seeded_by_the_global_rng_and_off_in_eval():
    settings = settings_for("norm")
    q, k, v, valid = random_inputs(200, 1)
    evaluation = lsg.lsg_attention(q, k, v, valid, settings, scaling=0.3, dropout=0.5, training=False)
    torch.testing.assert_close(evaluation, lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3))
    torch.manual_seed(3)
    first = lsg.lsg_attention(q, k, v, valid, settings, scaling=0.3, dropout=0.5, training=True)
    torch.manual_seed(3)
    again = lsg.lsg_attention(q, k, v, valid, settings, scaling=0.3, dropout=0.5, training=True)
    assert torch.equal(first, again) and not torch.allclose(first, evaluation)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_half_precision_error_within_twice_plain_low_precision(dtype, sparsity_type):
    """I11 for the fast path: its error in bf16/fp16 is at most ~2x a plain low-precision implementation's."""
    settings = settings_for(sparsity_type)
    q, k, v, valid = random_inputs(150, 1, heads=2, dim=16, pad=20)
    valid[0] = False  # a fully padded row must still give finite outputs
    truth = reference_lsg_attention(q, k, v, valid, settings, scaling=0.25)
    low = [x.to(dtype) for x in (q, k, v)]
    out = fast.lsg_fast_attention(*low, valid, settings, scaling=0.25)
    plain = reference_lsg_attention(*low, valid, settings, scaling=0.25, compute_dtype=dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
    error = (out.double() - truth.double()).abs().max()
    assert error <= 2 * (plain.double() - truth.double()).abs().max() + 1e-3


def test_bf16_gradients_are_close_to_fp32():
    settings = settings_for("norm")
    q, k, v, valid = random_inputs(200, 1, pad=13)
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        inputs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        fast.lsg_fast_attention(*inputs, valid, settings, scaling=0.3).float().pow(2).sum().backward()
        grads[dtype] = [x.grad.float() for x in inputs]
    for low, high in zip(grads[torch.bfloat16], grads[torch.float32], strict=True):
        assert (low - high).abs().max() <= 0.05 * high.abs().max()


def test_fast_path_keeps_less_memory_than_the_plain_one(monkeypatch):
    """The plain path keeps every block's gathered keys for backward; the fast one only the chunk it works on."""
    monkeypatch.setattr(fast, "GATHER_BUDGET", 2**16)  # several chunks at this small size, as at 4096+ tokens
    settings = LSGSettings(block_size=64, sparse_block_size=64, sparsity_factor=4, sparsity_type="norm")
    q, k, v, valid = (x.requires_grad_() if x.is_floating_point() else x
                      for x in random_inputs(2048, 1, batch=1, heads=4, dim=32))
    peaks = {}
    for name in ("lsg_fast", "lsg_blocked"):
        with PeakMemory() as memory:
            ATTENTION_VARIANTS.get(name)(q, k, v, valid, settings, scaling=0.2).sum().backward()
        peaks[name] = memory.peak_bytes
    assert peaks["lsg_fast"] < 0.6 * peaks["lsg_blocked"], peaks


@pytest.mark.parametrize("sparsity_type", ["norm", "lsh", "bos_pooling"])
def test_fast_path_keeps_only_its_output_and_log_sum_exp(sparsity_type):
    """Between forward and backward the fast path holds its output and row log-sum-exp, nothing of the sparse
    selection: its backward pass runs the selector again (the sparse keys would be ~70 % of the output here)."""
    settings = LSGSettings(block_size=64, sparse_block_size=64, sparsity_factor=4, sparsity_type=sparsity_type)
    q, k, v, valid = (x.requires_grad_() if x.is_floating_point() else x
                      for x in random_inputs(2048, 1, batch=1, heads=4, dim=32))
    with PeakMemory() as memory:
        out = fast.lsg_fast_attention(q, k, v, valid, settings, scaling=0.2, training=True)
        held = memory.live_bytes
    log_sum_exp = out.numel() // out.shape[-1] * 4
    assert held <= out.untyped_storage().nbytes() + log_sum_exp + 16 * 1024, held


def test_lsh_in_training_selects_the_same_tokens_again_in_the_backward_pass():
    """LSH draws its hyperplanes from the global RNG in training. The fast path's backward selects again from the
    forward's RNG state, so its gradients equal the plain path's under the same seed, and the RNG ends where the
    plain path leaves it."""
    settings = settings_for("lsh", block_size=8)
    q, k, v, valid = (x.double().requires_grad_() if x.is_floating_point() else x
                      for x in random_inputs(101, 1, pad=9))
    weights = torch.randn(2, 3, 102, 8, dtype=torch.float64)
    results = {}
    for name in ("lsg_fast", "lsg_blocked"):
        torch.manual_seed(5)
        out = ATTENTION_VARIANTS.get(name)(q, k, v, valid, settings, scaling=0.3, training=True)
        grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
        results[name] = (out, *grads, torch.rand(3, dtype=torch.float64))
    for got, want in zip(results["lsg_fast"], results["lsg_blocked"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_backward_selects_the_forward_tokens_under_autocast(monkeypatch):
    """Autocast sets the precision of LSH's bucket scores and is off during the backward pass: the fast path
    restores it there, so it selects the very tokens of the forward pass (in bf16 they differ from fp32's)."""
    selected = []
    sparse_tokens = KeyLayout.sparse_tokens

    def recording(self, *args):
        sparse = sparse_tokens(self, *args)
        selected.append(sparse.keys.detach().clone())
        return sparse

    monkeypatch.setattr(KeyLayout, "sparse_tokens", recording)
    settings = settings_for("lsh", block_size=16)
    q, k, v, valid = (x.requires_grad_() if x.is_floating_point() else x for x in random_inputs(300, 1, pad=20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast.lsg_fast_attention(q, k, v, valid, settings, scaling=0.3, training=True)
    out.float().pow(2).sum().backward()
    forward, backward = selected
    assert torch.equal(forward, backward)


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_every_selector_trains_under_cpu_autocast(sparsity_type):
    settings = settings_for(sparsity_type)
    q, k, v, valid = (x.requires_grad_() if x.is_floating_point() else x for x in random_inputs(200, 1, pad=30))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lsg.lsg_attention(q, k, v, valid, settings, scaling=0.3, training=True)
    out.float().pow(2).sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_double_backward_raises_rather_than_returning_wrong_gradients():
    settings = settings_for("pooling")
    q, k, v, valid = (x.double().requires_grad_() if x.is_floating_point() else x for x in random_inputs(100, 1))
    out = fast.lsg_fast_attention(q, k, v, valid, settings, scaling=0.3)
    (grad_q,) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad_q.pow(2).sum().backward()


def test_lsg_picks_flex_on_cuda_and_fast_elsewhere():
    cpu, cuda = torch.zeros(1), types.SimpleNamespace(is_cuda=True)
    assert default_variant_name(cpu, dropout=0.0, training=True) == "lsg_fast"
    assert default_variant_name(cuda, dropout=0.1, training=False) == "lsg_flex"
    assert default_variant_name(cuda, dropout=0.1, training=True) == "lsg_fast"  # flex_attention has no dropout


# --- flex_attention ------------------------------------------------------------------------------------------

eager_flex = functools.partial(flex_attention_kernel, compiled=False)


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize(("tokens", "globals_", "block_size"), [(97, 1, 16), (300, 7, 16), (301, 1, 24)])
def test_eager_flex_matches_the_plain_path(sparsity_type, tokens, globals_, block_size):
    settings = settings_for(sparsity_type, globals_, block_size)
    q, k, v, valid = random_inputs(tokens, globals_, pad=13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncompiled flex warns that it materialises the scores
        out = run_kernel(eager_flex, q, k, v, valid, settings)
    torch.testing.assert_close(out, lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("tokens", "block_size", "sparse_block_size", "factor"),
                         [(512, 16, 16, 4), (1024, 128, 128, 4), (1200, 200, 64, 8), (768, 256, 0, 4)])
def test_flex_block_mask_covers_every_visible_pair(tokens, block_size, sparse_block_size, factor):
    """Every (query, key) pair the mask_mod allows lies in a tile the block mask keeps, and tiles are skipped."""
    settings = LSGSettings(block_size=block_size, sparse_block_size=sparse_block_size, sparsity_factor=factor,
                           sparsity_type="pooling" if sparse_block_size else None, num_global_tokens=3)
    sparse = tokens // factor if settings.sparse_enabled else 0
    valid = torch.ones(1, tokens, dtype=torch.bool)
    sparse_valid = torch.ones(1, 1, sparse, dtype=torch.bool) if sparse else None
    mask_mod = lsg_mask_mod(settings, valid, sparse_valid)
    keys = tokens + sparse + 3
    q_index, k_index = torch.arange(tokens)[:, None], torch.arange(keys)[None]
    dense = mask_mod(torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long), q_index, k_index)
    tiles = lsg_block_mask(settings, tokens, sparse, mask_mod, torch.device("cpu")).to_dense()[0, 0].bool()
    tile = 128
    expanded = tiles.repeat_interleave(tile, 0).repeat_interleave(tile, 1)[:tokens, :keys]
    assert not (dense & ~expanded).any(), "a visible pair falls in a skipped tile"
    assert dense.sum(1).max() <= settings.keys_per_query()
    if tokens >= 1024:
        assert tiles.float().mean() < 0.75


@pytest.mark.slow
@pytest.mark.parametrize("sparsity_type", ["norm", "none"])
def test_compiled_flex_forward_matches_the_plain_path(sparsity_type):
    """The registered "lsg_flex" (compiled flex_attention; forward only on CPU) on a realistic block size."""
    settings = LSGSettings(block_size=128, sparse_block_size=128, sparsity_factor=4, sparsity_type=sparsity_type,
                           num_global_tokens=2)
    q, k, v, valid = random_inputs(1000, 2, heads=4, dim=32, pad=77)
    out = ATTENTION_VARIANTS.get("lsg_flex")(q, k, v, valid, settings, scaling=0.2)
    torch.testing.assert_close(out, lsg_blocked_attention(q, k, v, valid, settings, scaling=0.2), atol=1e-5, rtol=0)


def test_flex_refuses_dropout():
    settings = settings_for("norm")
    q, k, v, valid = random_inputs(100, 1)
    with pytest.raises(ValueError, match="dropout"):
        ATTENTION_VARIANTS.get("lsg_flex")(q, k, v, valid, settings, scaling=0.3, dropout=0.1, training=True)


def test_flex_buckets_are_two_per_octave_of_whole_tiles_and_blocks():
    assert [flex_length(t, 128) for t in (1, 128, 129, 300, 385, 513, 700, 800, 1500, 1600, 5000)] == \
        [128, 128, 256, 384, 512, 768, 768, 1024, 1536, 2048, 6144]
    assert flex_length(300, 48) == 384 and flex_length(385, 48) == 768  # unit = lcm(48, 128) = 384


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_bucket_padding_changes_no_output(sparsity_type, monkeypatch):
    """The compiled path pads T' up to its bucket; run it eagerly (no compile) against the plain kernel."""
    monkeypatch.setattr(lsg.flex, "compiled_flex_attention", lambda: flex_attention)
    settings = settings_for(sparsity_type, globals_=2)
    q, k, v, valid = random_inputs(150, 2, pad=13)  # T' = 160 -> bucket 256
    torch.testing.assert_close(ATTENTION_VARIANTS.get("lsg_flex")(q, k, v, valid, settings, scaling=0.3),
                               lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3), atol=1e-5, rtol=0)


@pytest.fixture
def counted_flex(monkeypatch):
    """compiled_flex_attention counting dynamo frames (no inductor, no C++ build), isolated from other compiles."""
    def install(**options):
        counter = CompileCounter()
        compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True, backend=counter,
                                 isolate_recompiles=True, **options)
        monkeypatch.setattr(lsg.flex, "compiled_flex_attention", lambda: compiled)
        return counter

    torch._dynamo.reset()
    yield install
    torch._dynamo.reset()


def _flex_matches_plain(tokens: int, settings: LSGSettings) -> None:
    q, k, v, valid = random_inputs(tokens, 2, batch=1, heads=2, pad=5)
    torch.testing.assert_close(ATTENTION_VARIANTS.get("lsg_flex")(q, k, v, valid, settings, scaling=0.3),
                               lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3), atol=1e-5, rtol=0)


def test_flex_compiles_once_per_bucket(counted_flex):
    counter = counted_flex()
    settings = settings_for("norm", globals_=2, block_size=128)
    for tokens in (300, 330, 383):  # padded to 384, 384, 384: one bucket
        _flex_matches_plain(tokens, settings)
    assert counter.frame_count == 1
    for tokens in (450, 700):  # buckets 512 and 768
        _flex_matches_plain(tokens, settings)
    assert counter.frame_count == 3


def test_past_the_compile_limit_flex_falls_back_to_the_fast_kernel(counted_flex):
    counted_flex(recompile_limit=1)
    lsg.flex._warn_recompile_limit.cache_clear()
    settings = settings_for("norm", globals_=2, block_size=128)
    _flex_matches_plain(300, settings)
    with pytest.warns(UserWarning, match="FLEX_COMPILE_LIMIT"):
        _flex_matches_plain(450, settings)  # a second bucket: over the limit, exact through lsg_fast


# --- whole models ----------------------------------------------------------------------------------------------

def tiny_lsg_roberta(sparsity_type: str):
    config = RobertaConfig(**tiny_config_kwargs(max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                                eos_token_id=2, type_vocab_size=1))
    model = transformers.RobertaForMaskedLM(config).eval()
    return lsg.convert(model, max_length=200, block_size=8, sparse_block_size=8, sparsity_factor=2,
                       sparsity_type=sparsity_type, num_global_tokens=2, bos_token_id=0, mask_token_id=4)


@pytest.mark.parametrize("sparsity_type", ["norm", "bos_pooling", "none"])
def test_converted_model_gives_the_same_outputs_and_gradients_on_every_path(sparsity_type):
    model = tiny_lsg_roberta(sparsity_type)
    ids = torch.randint(5, 99, (2, 150))
    mask = torch.ones_like(ids)
    mask[1, 140:] = 0
    results = {}
    for name in ("lsg", "lsg_fast", "lsg_blocked", "lsg_reference"):
        model.set_attn_implementation(name)
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits.pow(2).mean().backward()
        grad = model.roberta.encoder.layer[0].attention.self.query.weight.grad.clone()
        results[name] = (logits.detach(), grad)
    for name in ("lsg", "lsg_fast", "lsg_reference"):
        torch.testing.assert_close(results[name][0], results["lsg_blocked"][0], atol=2e-5, rtol=0)
    for name in ("lsg", "lsg_fast"):
        torch.testing.assert_close(results[name][1], results["lsg_blocked"][1], atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_converted_model_under_lsg_flex_matches():
    model = tiny_lsg_roberta("norm")
    ids = torch.randint(5, 99, (2, 150))
    with torch.no_grad():
        model.set_attn_implementation("lsg_blocked")
        plain = model(input_ids=ids).logits
        model.set_attn_implementation("lsg_flex")
        flex = model(input_ids=ids).logits
    torch.testing.assert_close(flex, plain, atol=2e-5, rtol=0)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant):
    """The hooks stay outside the checkpointed forward and lsg_fast's recompute selects the same keys again:
    with dropout on, checkpointed training gives the plain loss and gradients exactly."""
    config = RobertaConfig(**tiny_config_kwargs(max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                                eos_token_id=2, type_vocab_size=1, hidden_dropout_prob=0.1,
                                                attention_probs_dropout_prob=0.1))
    model = lsg.convert(transformers.RobertaForSequenceClassification(config), max_length=200, block_size=8,
                        sparse_block_size=8, sparsity_factor=2, sparsity_type="norm", num_global_tokens=2,
                        bos_token_id=0, mask_token_id=4).train()
    ids = torch.randint(5, 99, (2, 150))
    mask = torch.ones_like(ids)
    mask[1, 137:] = 0
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(input_ids=ids, attention_mask=mask).logits.pow(2).mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert model.is_activation_checkpointing
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    assert grads.keys() == grads_ckpt.keys() and any("global_embeddings" in n for n in grads)
    torch.testing.assert_close(loss_ckpt, loss, atol=0, rtol=0)
    torch.testing.assert_close(grads_ckpt, grads, atol=1e-9, rtol=0)
