"""Attention dropout on every path of "lsg": the counter-based masks (`lsg.dropout`), the CPU matmul core that
uses them against a plain implementation with the same mask, the CUDA SDPA core (run on CPU with stand-ins for
the two CUDA ops) and which kernel runs for each device, dtype and dropout."""

import functools
import importlib.util
import logging
import math
from pathlib import Path

import pytest
import torch
from test_fast_kernel import random_inputs, settings_for

import lsg
import lsg.fast as fast
from lsg.attention import KeyLayout, lsg_blocked_attention, lsg_layer
from lsg.dropout import CounterDropout
from lsg.settings import SPARSITY_TYPES
from lsg.variants import describe_kernel


def keep_mask(dropout: CounterDropout, batch: int, heads: int, first_row: int, rows: int, first_column: int,
              columns: int) -> torch.Tensor:
    return dropout.keep(batch, heads, torch.arange(first_row, first_row + rows).view(1, rows), first_column,
                        columns)[:, :, 0]


# --- the masks -------------------------------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_mask_and_another_seed_another():
    masks = [keep_mask(CounterDropout(0.3, seed), 2, 3, 5, 40, 0, 70) for seed in (11, 11, 12)]
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    assert set(masks[0].unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize(("first_row", "rows", "first_column", "columns"),
                         [(0, 64, 0, 300), (7, 20, 1, 33), (40, 3, 257, 384), (63, 1, 299, 1)])
def test_a_mask_does_not_depend_on_how_the_grid_is_cut(first_row, rows, first_column, columns):
    """Any block of (rows, columns) equals the same block of one mask over the whole grid: chunking (query
    blocks) and the split into key sets (column offsets, not multiples of 4) leave the mask unchanged."""
    dropout = CounterDropout(0.5, 3)
    whole = keep_mask(dropout, 2, 2, 0, 64, 0, 700)
    part = keep_mask(dropout, 2, 2, first_row, rows, first_column, columns)
    assert torch.equal(part, whole[:, :, first_row : first_row + rows, first_column : first_column + columns])
    blocks = dropout.keep(2, 2, torch.arange(first_row, first_row + rows).view(rows, 1), first_column, columns)
    assert torch.equal(blocks[:, :, :, 0], part)  # (n, bs) rows: the same positions, another shape


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_independence(p):
    """Over 2.4M pairs the keep rate is 1 - p within 5 standard deviations, and so is the rate at which two
    neighbours (next column, next row, next head, next batch row) are both kept: (1 - p)**2."""
    dropout = CounterDropout(p, 2024)
    keep = keep_mask(dropout, 2, 4, 0, 300, 0, 1000)
    rate = 1 - dropout.threshold / 2**16
    assert abs(rate - (1 - p)) <= 2**-17
    n = keep.numel()
    assert abs(keep.mean().item() - rate) <= 5 * math.sqrt(rate * (1 - rate) / n)
    both = rate**2
    for a, b in [(keep[..., 1:], keep[..., :-1]), (keep[:, :, 1:], keep[:, :, :-1]),
                 (keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1])]:
        pairs = (a * b).mean().item()
        assert abs(pairs - both) <= 5 * math.sqrt(both * (1 - both) / a.numel()), (p, pairs, both)
    assert dropout.scale * rate == pytest.approx(1.0)  # kept values scaled: unbiased


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_a_drop_probability_outside_0_1_is_refused(p):
    with pytest.raises(ValueError, match=rf"dropout p must be in \[0, 1\), got {p}"):
        CounterDropout(p, 0)


# --- the CPU matmul core against a plain implementation with the same mask -------------------------------------

def plain_dropout_attention(query, key, value, layout: KeyLayout, dropout: CounterDropout):
    """Every block's K keys gathered at once (as `lsg_blocked`), softmax, the counter mask of each query row and
    key column, scale: differentiable by autograd, no chunks and no recomputation."""
    keys = layout.block_keys(query, key, value)
    B, H, _, D = query.shape
    G, bs, N = layout.settings.num_global_tokens, layout.settings.block_size, keys.blocks
    scores = query[:, :, :G] @ key.transpose(-1, -2) * layout.scaling
    probs = scores.masked_fill(~keys.all_valid[:, None, None], float("-inf")).softmax(-1)
    out_global = (probs * dropout.keep(B, H, torch.arange(G).view(1, G), 0, G + N * bs)[:, :, 0]) @ value
    k, v = keys.gather(0, N)  # (B, H, N, K, D)
    scores = keys.token_blocks(query) @ k.transpose(-1, -2) * layout.scaling
    probs = scores.masked_fill(~keys.visible.unsqueeze(-2), float("-inf")).softmax(-1)
    keep = dropout.keep(B, H, G + torch.arange(N * bs).view(N, bs), 0, k.shape[3], probs.dtype)
    out_tokens = ((probs * keep) @ v).flatten(2, 3)
    return torch.cat([out_global, out_tokens], dim=2) * dropout.scale


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("one_block_chunks", [False, True])
def test_matmul_core_with_dropout_equals_the_plain_kernel_with_the_same_mask(sparsity_type, one_block_chunks,
                                                                             monkeypatch):
    """Outputs and every input gradient (float64), whatever the chunking: the masks are the same."""
    if one_block_chunks:
        monkeypatch.setattr(fast, "GATHER_BUDGET", 1)
    settings = settings_for(sparsity_type, globals_=2, block_size=8)
    q, k, v, valid = (x.double().requires_grad_() if x.is_floating_point() else x
                      for x in random_inputs(101, 2, pad=30))
    dropout = CounterDropout(0.3, 99)
    weights = torch.randn(2, 3, 103, 8, dtype=torch.float64)
    results = []
    for kernel in (functools.partial(fast.fast_attention, core=fast.MatmulCore(0.3, dropout)),
                   lambda *args: plain_dropout_attention(*args[:4], dropout)):
        torch.manual_seed(0)  # LSH draws its hyperplanes in training
        out = lsg_layer(q, k, v, valid, settings, scaling=0.3, dropout=0.3, training=True, layer_index=0,
                        kernel=kernel)
        results.append((out, *torch.autograd.grad((out * weights).sum(), (q, k, v))))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    dropped = results[0][0] - lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3)
    assert dropped.abs().max() > 0.1  # the mask did act


@pytest.mark.parametrize("causal", [False, True])
def test_matmul_core_with_dropout_passes_gradcheck(causal):
    """With a fixed seed the dropped-out kernel is a deterministic function, bidirectional or causal (per-row
    visibility of the local keys): its backward pass is its exact derivative."""
    settings = settings_for("pooling", block_size=4)
    q, k, v, valid = random_inputs(20, 1, batch=1, heads=2, dim=4, pad=3, dtype=torch.float64)  # T a multiple of bs
    layout = KeyLayout(valid, settings, scaling=0.5, layer_index=0, training=True, causal=causal)
    core = fast.MatmulCore(0.5, CounterDropout(0.4, seed=5))
    assert torch.autograd.gradcheck(lambda *x: fast.fast_attention(*x, layout, 0.4, core=core),
                                    tuple(x.requires_grad_() for x in (q, k, v)))


def test_matmul_core_with_dropout_in_bf16_is_close_to_float64_with_the_same_mask():
    settings = settings_for("norm")
    q, k, v, valid = random_inputs(150, 1, heads=2, dim=16, pad=20)
    dropout = CounterDropout(0.1, 8)
    outputs = {}
    for dtype in (torch.bfloat16, torch.float64):
        kernel = functools.partial(fast.fast_attention, core=fast.MatmulCore(0.25, dropout))
        outputs[dtype] = lsg_layer(*(x.to(dtype) for x in (q, k, v)), valid, settings, scaling=0.25, dropout=0.1,
                                   training=True, layer_index=0, kernel=kernel)
    assert outputs[torch.bfloat16].dtype == torch.bfloat16
    error = (outputs[torch.bfloat16].double() - outputs[torch.float64]).abs().max()
    assert error <= 0.05 * outputs[torch.float64].abs().max(), error


def test_lsg_with_dropout_on_cpu_is_seeded_by_the_global_rng_and_unbiased():
    """Through "lsg" in training: the same torch seed gives the same output; averaged over seeds, the output
    approaches the one without dropout (dropout is unbiased)."""
    settings = settings_for("norm")
    q, k, v, valid = random_inputs(200, 1, batch=1, heads=2)
    plain = lsg.lsg_attention(q, k, v, valid, settings, scaling=0.3)
    runs = []
    for seed in range(200):
        torch.manual_seed(seed)
        runs.append(lsg.lsg_attention(q, k, v, valid, settings, scaling=0.3, dropout=0.2, training=True))
    torch.manual_seed(0)
    assert torch.equal(runs[0], lsg.lsg_attention(q, k, v, valid, settings, scaling=0.3, dropout=0.2,
                                                  training=True))
    single, mean = (runs[0] - plain).abs().mean(), (torch.stack(runs).mean(0) - plain).abs().mean()
    assert mean < single / 5, (mean, single)  # 200 draws: the error of the mean falls as 1/sqrt(200)


# --- the CUDA core, on CPU with stand-ins for its two ops -------------------------------------------------------

def _scores(q, k, bias, scale):
    scores = (q @ k.transpose(-1, -2)).double() * scale
    return scores if bias is None else scores + bias.double()


def _keep(q, k, p, seed):
    """The stand-in kernels' mask over (B, h, L, K), from their seed."""
    dropout = CounterDropout(p, seed)
    return dropout.keep(*q.shape[:2], torch.arange(q.shape[2]).view(1, -1), 0, k.shape[2], torch.float64)[:, :, 0] \
        * dropout.scale


def _attention(q, k, v, bias, p, scale, seed):
    """Math attention over (B, h, L, D) with an additive bias and the counter mask of `seed`: output and lse."""
    scores = _scores(q, k, bias, scale)
    lse = scores.logsumexp(-1)
    probs = (scores - lse.unsqueeze(-1)).exp()
    if p:
        probs = probs * _keep(q, k, p, seed)
    return (probs.to(q.dtype) @ v), lse.to(torch.promote_types(q.dtype, torch.float32))  # fp32 but for fp64 tests


def _attention_backward(grad, q, k, v, bias, out, lse, p, scale, seed):
    """What a fused kernel's backward computes from the output and lse it is given (here those over all key sets
    of the rows, so the result is this set's share): P = exp(S - lse), dS = P * (dP - rowsum(dO * O))."""
    dtype = q.dtype
    grad, q, k, v, out = (x.double() for x in (grad, q, k, v, out))
    probs = (_scores(q, k, bias, scale) - lse.double().unsqueeze(-1)).exp()
    keep = _keep(q, k, p, seed) if p else torch.ones_like(probs)
    d_scores = probs * ((grad @ v.transpose(-1, -2)) * keep - (grad * out).sum(-1, keepdim=True))
    grads = d_scores @ k * scale, d_scores.transpose(-1, -2) @ q * scale, (probs * keep).transpose(-1, -2) @ grad
    return tuple(g.to(dtype) for g in grads)  # the kernels' gradients come in the inputs' dtype


class StandInKernels:
    """CPU stand-ins for the flash and memory-efficient CUDA ops with their call contracts: the efficient one pads
    its lse rows to 32 and wants them padded back, each returns an RNG state that its backward must get again.
    Seeds count the forward calls from 1 (`restart` sets the count back, so a rerun draws the same masks)."""

    def __init__(self) -> None:
        self.calls, self.kernels_used = 0, set()

    def restart(self) -> None:
        self.calls = 0

    def _seed(self) -> torch.Tensor:
        self.calls += 1
        return torch.tensor(self.calls)

    def flash(self, q, k, v, p, *, scale):
        self.kernels_used.add("flash")
        seed = self._seed()
        out, lse = _attention(q, k, v, None, p, scale, int(seed))
        none = torch.empty(0)
        return out, lse, none, none, q.shape[2], k.shape[2], seed, torch.tensor(0), none

    def flash_backward(self, grad, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, p, causal, seed, offset, *,
                       scale):
        assert (max_q, max_k) == (q.shape[2], k.shape[2]) and not causal
        return _attention_backward(grad, q, k, v, None, out, lse, p, scale, int(seed))

    def efficient(self, q, k, v, bias, compute_lse, p, *, scale):
        self.kernels_used.add("efficient")
        assert compute_lse and (bias is None or bias.stride(-2) % fast.SdpaCore.BIAS_ALIGN == 0)
        seed = self._seed()
        out, lse = _attention(q, k, v, bias, p, scale, int(seed))
        rows = -(-q.shape[2] // 32) * 32
        return out, torch.nn.functional.pad(lse, (0, rows - q.shape[2]), value=float("nan")), seed, torch.tensor(0)

    def efficient_backward(self, grad, q, k, v, bias, out, lse, seed, offset, p, mask, *, scale):
        assert lse.shape[-1] % 32 == 0 and mask == [True, True, True, False]
        return (*_attention_backward(grad, q, k, v, bias, out, lse[..., : q.shape[2]], p, scale, int(seed)), None)


@pytest.fixture
def stand_ins(monkeypatch):
    kernels = StandInKernels()
    monkeypatch.setattr(fast.SdpaCore, "ops", {"flash": (kernels.flash, kernels.flash_backward),
                                               "efficient": (kernels.efficient, kernels.efficient_backward)})
    return kernels


@pytest.mark.parametrize("sparsity_type", ["norm", "bos_pooling", "none"])
@pytest.mark.parametrize("flash_when_unmasked", [False, True])
def test_sdpa_core_without_dropout_equals_the_plain_kernel(sparsity_type, flash_when_unmasked, stand_ins,
                                                           monkeypatch):
    """The folding of (B, H, n), the additive masks, the lse padding and the merge: outputs and gradients of the
    plain kernel, with each key set on the kernel `SdpaCore.kernel` picks (here in float64)."""
    if flash_when_unmasked:
        monkeypatch.setattr(fast.SdpaCore, "kernel", staticmethod(lambda dtype, masked: "efficient" if masked
                                                                   else "flash"))
    monkeypatch.setattr(fast, "GATHER_BUDGET", 1)
    settings = settings_for(sparsity_type, globals_=2, block_size=8)
    q, k, v, valid = (x.double().requires_grad_() if x.is_floating_point() else x
                      for x in random_inputs(101, 2, pad=9))
    weights = torch.randn(2, 3, 103, 8, dtype=torch.float64)
    kernel = functools.partial(fast.fast_attention, core=fast.SdpaCore(0.3, 0.0))
    results = []
    for run in (lambda: lsg_layer(q, k, v, valid, settings, scaling=0.3, dropout=0.0, training=False,
                                  layer_index=0, kernel=kernel),
                lambda: lsg_blocked_attention(q, k, v, valid, settings, scaling=0.3)):
        out = run()
        results.append((out, *torch.autograd.grad((out * weights).sum(), (q, k, v))))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert stand_ins.kernels_used == ({"flash", "efficient"} if flash_when_unmasked else {"efficient"})


@pytest.mark.parametrize("flash_when_unmasked", [False, True])
def test_sdpa_core_with_dropout_hands_each_key_set_its_rng_state_back(flash_when_unmasked, stand_ins,
                                                                      monkeypatch):
    """With dropout the kernel function is deterministic once the kernels' seeds are: gradcheck passes only if
    the backward pass gives every key set the RNG state of its own forward call (each call has another seed)."""
    if flash_when_unmasked:
        monkeypatch.setattr(fast.SdpaCore, "kernel", staticmethod(lambda dtype, masked: "efficient" if masked
                                                                   else "flash"))
    monkeypatch.setattr(fast, "GATHER_BUDGET", 1)
    settings = settings_for("pooling", block_size=4)
    q, k, v, valid = random_inputs(20, 1, batch=1, heads=1, dim=4, pad=3, dtype=torch.float64)
    layout = KeyLayout(valid, settings, scaling=0.5, layer_index=0, training=True)

    def token_outputs(query, key, value):
        stand_ins.restart()
        return fast.fast_attention(query, key, value, layout, 0.3, core=fast.SdpaCore(0.5, 0.3))

    assert torch.autograd.gradcheck(token_outputs, tuple(x.requires_grad_() for x in (q, k, v)))
    assert stand_ins.calls > 4  # several key sets, so several seeds
    plain = fast.fast_attention(q, k, v, layout, 0.0, core=fast.MatmulCore(0.5))
    assert (token_outputs(q, k, v) - plain).abs().max() > 0.05  # dropout acted


def load_gpu_check():
    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_checks_of_the_dropout_path_pass_on_cpu(stand_ins):
    """scripts/gpu_check.py's checks of the SDPA core (here with the stand-ins) and of dropout gradients (here the
    matmul core) hold on CPU, so a failure on a GPU points at the CUDA kernels, not at the checks."""
    gpu_check = load_gpu_check()
    output_error, grad_error = gpu_check.check_sdpa_core(torch.float32, torch.device("cpu"))
    assert output_error <= 1e-4 and grad_error <= 1e-3 and stand_ins.kernels_used == {"efficient"}
    same, error = gpu_check.check_sdpa_dropout(torch.device("cpu"))
    assert same and error <= 1e-2, error


# --- which kernel runs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "dtype", "dropout", "training", "variant", "core"), [
    ("cpu", torch.float32, 0.0, True, "lsg_fast", "flash_cpu"),
    ("cpu", torch.bfloat16, 0.1, False, "lsg_fast", "flash_cpu"),  # eval: no dropout
    ("cpu", torch.float32, 0.1, True, "lsg_fast", "matmul"),
    ("cpu", torch.bfloat16, 0.1, True, "lsg_fast", "matmul"),
    ("cuda", torch.bfloat16, 0.0, True, "lsg_flex", None),
    ("cuda", torch.float32, 0.1, False, "lsg_flex", None),
    ("cuda", torch.bfloat16, 0.1, True, "lsg_fast", "sdpa_cuda"),
    ("cuda", torch.float32, 0.1, True, "lsg_fast", "sdpa_cuda"),
    ("mps", torch.float16, 0.1, True, "lsg_fast", "matmul"),
])
def test_each_device_dtype_and_dropout_names_its_kernel(device, dtype, dropout, training, variant, core):
    description = describe_kernel(device, dtype, dropout, training)
    assert description.startswith(variant) and (core is None or f"core {core} " in description), description
    if core == "sdpa_cuda":
        assert ("flash for key sets without a mask" in description) == (dtype == torch.bfloat16)
    if core is not None:
        assert fast.core_name(torch.device(device), dropout if training else 0.0) == core


@pytest.mark.parametrize(("device", "dropout", "core_type"), [
    ("cpu", 0.0, fast.FlashCore), ("cpu", 0.1, fast.MatmulCore), ("cuda", 0.0, fast.SdpaCore),
    ("cuda", 0.1, fast.SdpaCore), ("meta", 0.1, fast.MatmulCore)])
def test_default_core_is_the_one_described(device, dropout, core_type):
    torch.manual_seed(4)
    core = fast.default_core(torch.device(device), 0.125, dropout)
    assert type(core) is core_type and core.name == fast.core_name(torch.device(device), dropout)
    if core_type is fast.MatmulCore:
        assert (core.dropout is None) == (not dropout)
        if dropout:
            torch.manual_seed(4)
            assert core.dropout == fast.default_core(torch.device(device), 0.125, dropout).dropout  # torch's seed
            assert core.dropout.p == dropout


def test_lsg_runs_the_described_core_and_logs_it_once(caplog, monkeypatch):
    used = []
    apply = fast._BlockedAttention.apply
    monkeypatch.setattr(fast._BlockedAttention, "apply", lambda *args: used.append(args[-1].name) or apply(*args))
    settings = settings_for("norm")
    q, k, v, valid = random_inputs(100, 1)
    with caplog.at_level(logging.INFO, logger="lsg"):
        for _ in range(2):
            for dropout in (0.0, 0.1):
                lsg.lsg_attention(q, k, v, valid, settings, scaling=0.3, dropout=dropout, training=True)
    assert used == ["flash_cpu", "matmul"] * 2
    lines = [r.getMessage() for r in caplog.records if r.name == "lsg" and "lsg attention on" in r.getMessage()]
    assert len(lines) <= 2 and all("lsg_fast, core" in line for line in lines)  # once per combination
