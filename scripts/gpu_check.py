"""Check and time the GPU path of LSG attention in one go: `python scripts/gpu_check.py` on a CUDA machine.

1. Correctness of "lsg_flex" (compiled flex_attention, what "lsg" runs on CUDA) against the plain blocked
   kernel "lsg_blocked", for every selector, with padding, at several lengths (distinct compile buckets):
   forward in fp32 and bf16, backward in fp32.
2. The dropout path ("lsg" in training with dropout: `lsg_fast` over torch's CUDA SDPA kernels, `SdpaCore`):
   without dropout it must equal "lsg_blocked" (fp32, bf16: flash and memory-efficient kernels both used);
   with dropout the same CUDA seed must give the same output, and the gradient must match central finite
   differences along a random direction (fp32).
3. Gradient checkpointing on a tiny converted model under "lsg" (so lsg_flex) in fp32 and bf16 autocast:
   the checkpointed loss and gradients must equal the plain ones.
4. Timing: `tools.bench` with its GPU defaults (bf16, 12 layers, batch 4) for the dense floor, full SDPA
   (flash), HF Longformer, HF BigBird and LSG (flex), each also with attention dropout 0.1 (LSG then runs
   the SDPA-backed path), at the lengths given (default 4096 16384 65536). It writes the same JSON as
   `make bench`, runs/bench/<gpu>-<date>.json, and prints the table for docs/performance.md.

Without CUDA it exits with status 2 and says so. The GPU targets (docs/performance.md) stay unverified until someone
runs this script and reports its output.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `tools/` sits beside the package and is not installed: run as a file, this script finds it from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lsg.settings import SPARSITY_TYPES, LSGSettings  # noqa: E402
from lsg.variants import ATTENTION_VARIANTS  # noqa: E402

CHECK_LENGTHS = (700, 3000, 5000)  # buckets 768, 3072, 6144: three compiles


def check_variant(sparsity_type: str, dtype: torch.dtype, device: torch.device, tokens: int
                  ) -> tuple[float, float | None]:
    """Max |lsg_flex - lsg_blocked| of the outputs, and of the input gradients in fp32 (None in bf16)."""
    settings = LSGSettings(block_size=128, sparse_block_size=128, sparsity_factor=4, sparsity_type=sparsity_type,
                           num_global_tokens=2)
    heads, dim = 12, 64
    inputs = [torch.randn(2, heads, 2 + tokens, dim, device=device, dtype=dtype, requires_grad=True)
              for _ in range(3)]
    valid = torch.ones(2, tokens, dtype=torch.bool, device=device)
    valid[1, tokens - tokens // 6:] = False
    outputs, grads = {}, {}
    for name in ("lsg_flex", "lsg_blocked"):
        out = ATTENTION_VARIANTS.get(name)(*inputs, valid, settings, scaling=dim**-0.5)
        outputs[name] = out.float()
        if dtype == torch.float32:
            grads[name] = torch.autograd.grad(out.pow(2).sum(), inputs)
    output_error = (outputs["lsg_flex"] - outputs["lsg_blocked"]).abs().max().item()
    if not grads:
        return output_error, None
    grad_error = max((a - b).abs().max().item() for a, b in zip(grads["lsg_flex"], grads["lsg_blocked"], strict=True))
    return output_error, grad_error


def check_sdpa_core(dtype: torch.dtype, device: torch.device) -> tuple[float, float | None]:
    """Max |lsg_fast over SdpaCore - lsg_blocked| of the outputs without dropout, and of the input gradients in
    fp32 (None in bf16)."""
    import functools

    from lsg.attention import lsg_layer
    from lsg.fast import SdpaCore, fast_attention

    settings = LSGSettings(block_size=128, sparse_block_size=128, sparsity_factor=4, sparsity_type="norm",
                           num_global_tokens=2)
    inputs = [torch.randn(2, 12, 2 + 3000, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    valid = torch.ones(2, 3000, dtype=torch.bool, device=device)
    valid[1, 2500:] = False  # masked key sets: the memory-efficient kernel; whole ones in bf16: flash
    kernel = functools.partial(fast_attention, core=SdpaCore(64**-0.5, 0.0))
    outputs = [lsg_layer(*inputs, valid, settings, scaling=64**-0.5, dropout=0.0, training=False, layer_index=0,
                         kernel=kernel),
               ATTENTION_VARIANTS.get("lsg_blocked")(*inputs, valid, settings, scaling=64**-0.5)]
    output_error = (outputs[0].float() - outputs[1].float()).abs().max().item()
    if dtype != torch.float32:
        return output_error, None
    grads = [torch.autograd.grad(out.pow(2).sum(), inputs) for out in outputs]
    return output_error, max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))


def check_sdpa_dropout(device: torch.device) -> tuple[bool, float]:
    """"lsg" with dropout 0.1 in training (fp32): whether the same seed gives the same output, and the relative
    error of the gradient along a random direction against central finite differences. (On CPU this checks
    the matmul core; the tests run it there.)"""
    settings = LSGSettings(block_size=64, sparse_block_size=64, sparsity_factor=4, sparsity_type="pooling")
    q, k, v = (torch.randn(1, 4, 1 + 1000, 32, device=device) for _ in range(3))
    valid = torch.ones(1, 1000, dtype=torch.bool, device=device)
    direction = [torch.randn_like(x) for x in (q, k, v)]
    weights = torch.randn_like(q)

    def loss(*inputs: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(7)  # every device's generator: the masks
        out = ATTENTION_VARIANTS.get("lsg")(*inputs, valid, settings, scaling=32**-0.5, dropout=0.1, training=True)
        return (out * weights).sum()

    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    value = loss(*inputs)
    same = bool(torch.equal(value.detach(), loss(q, k, v)))
    analytic = sum((g * d).sum() for g, d in zip(torch.autograd.grad(value, inputs), direction, strict=True))
    eps = 1e-2
    with torch.no_grad():
        plus = loss(*(x + eps * d for x, d in zip((q, k, v), direction, strict=True)))
        minus = loss(*(x - eps * d for x, d in zip((q, k, v), direction, strict=True)))
    numeric = (plus - minus) / (2 * eps)
    return same, abs((analytic - numeric) / numeric).item()


def check_checkpointing(device: torch.device, dtype: torch.dtype) -> float:
    """Max |grad with - grad without| activation checkpointing of a tiny converted RoBERTa (attn "lsg")."""
    import transformers

    import lsg

    config = transformers.RobertaConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, max_position_embeddings=514, pad_token_id=1,
                                        bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)
    model = lsg.convert(transformers.RobertaForSequenceClassification(config), max_length=4096, block_size=128,
                        bos_token_id=0, mask_token_id=4).to(device).train()
    ids = torch.randint(5, 99, (2, 3000), device=device)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            model(input_ids=ids).logits.float().pow(2).mean().backward()
        grads.append([p.grad.float() for p in model.parameters() if p.grad is not None])
    return max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-timing", action="store_true", help="only the correctness checks")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; run this script on a GPU machine "
              "(torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    failures = 0
    for tokens in CHECK_LENGTHS:
        for sparsity_type in SPARSITY_TYPES:
            for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
                output_error, grad_error = check_variant(sparsity_type, dtype, device, tokens)
                # norm/lsh make discrete choices that bf16 rounding can flip (docs/performance.md): report only
                strict = dtype == torch.float32 or sparsity_type not in ("norm", "lsh")
                ok = not strict or (output_error <= tolerance and (grad_error is None or grad_error <= 1e-3))
                failures += not ok
                grad_text = "" if grad_error is None else f", grads {grad_error:.2e}"
                print(f"{'ok  ' if ok else 'FAIL'} T={tokens:<5d} {sparsity_type:12s} {str(dtype):15s} "
                      f"outputs {output_error:.2e}{grad_text}")
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        output_error, grad_error = check_sdpa_core(dtype, device)
        ok = output_error <= tolerance and (grad_error is None or grad_error <= 1e-3)
        failures += not ok
        grad_text = "" if grad_error is None else f", grads {grad_error:.2e}"
        print(f"{'ok  ' if ok else 'FAIL'} SDPA core, dropout 0 {str(dtype):15s} outputs {output_error:.2e}"
              f"{grad_text}")
    same, error = check_sdpa_dropout(device)
    ok = same and error <= 1e-2
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} SDPA core dropout 0.1: same seed, same output: {same}; gradient vs finite "
          f"differences {error:.2e}")
    for dtype in (torch.float32, torch.bfloat16):
        error = check_checkpointing(device, dtype)
        ok = error <= 1e-6
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} activation checkpointing {str(dtype):15s} grads {error:.2e}")
    if not args.no_timing:
        from tools.bench import main as bench

        lengths = [str(length) for length in args.lengths]
        bench(["--lengths", *lengths, "--layers", str(args.layers), "--batch", str(args.batch), "--dropout-lengths",
               *lengths, "--systems", "full_sdpa", "longformer_512", "bigbird", "lsg_norm", "lsg_local_256"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
