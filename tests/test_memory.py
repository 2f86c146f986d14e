"""PeakMemory counts the storages created inside its block, once each, for as long as they live."""

import torch
from torch import nn

from lsg.memory import PeakMemory

MB = 1_000_000  # a (1000, 250) float32 tensor


def test_counts_a_tensor_allocated_inside() -> None:
    with PeakMemory() as memory:
        x = torch.empty(1000, 250)
    assert memory.peak_bytes == x.untyped_storage().nbytes() == MB
    assert memory.live_bytes == MB


def test_freed_temporaries_do_not_accumulate() -> None:
    with PeakMemory() as memory:
        for _ in range(20):
            y = torch.ones(1000, 250) * 2 + 1  # ones and the product die once the line is done
        del y
    # the worst moment holds three: the previous y plus ones and ones * 2, or plus ones * 2 and the sum
    assert memory.peak_bytes == 3 * MB
    assert memory.live_bytes == 0


def test_weights_created_before_are_not_counted() -> None:
    weight = torch.randn(1000, 250)
    with PeakMemory() as memory:
        transposed, rows, flat = weight.t(), weight[:10], weight.view(-1)  # views share the weight's storage
        weight.mul_(1.0)  # in place: no new storage
    assert memory.peak_bytes == 0
    assert transposed.shape == (250, 1000) and rows.shape == (10, 250) and flat.numel() == 250_000


def test_module_forward_counts_only_its_output() -> None:
    layer = nn.Linear(250, 1000)
    x = torch.randn(8, 250)
    with torch.no_grad(), PeakMemory() as memory:
        out = layer(x)
    assert memory.peak_bytes == out.untyped_storage().nbytes() == 8 * 1000 * 4


def test_a_view_keeps_its_storage_alive() -> None:
    with PeakMemory() as memory:
        base = torch.ones(1000, 250)
        halves = base.chunk(2)  # two views of one storage: counted once
        del base
        assert memory.live_bytes == MB
        del halves
    assert memory.live_bytes == 0
    assert memory.peak_bytes == MB


def test_same_work_gives_the_same_peak() -> None:
    def work() -> int:
        with torch.no_grad(), PeakMemory() as memory:
            x = torch.randn(64, 256)
            for _ in range(5):
                x = torch.relu(x @ torch.randn(256, 256)) + x
        return memory.peak_bytes

    assert work() == work() > 0


def test_out_tensor_grown_inside_is_counted() -> None:
    out = torch.empty(0)
    with PeakMemory() as memory:
        torch.add(torch.zeros(1000, 250), 1, out=out)  # resizing `out` gives it a new storage
    assert memory.peak_bytes == 2 * MB  # the zeros input and the grown out
    assert memory.live_bytes == MB
