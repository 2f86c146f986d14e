"""`python -m tools.pattern`: the PNG is written, and what it draws follows the library's rules (design §3.2, §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsg.settings import LSGSettings
from tools.pattern import (
    DEFAULT_COST_LENGTHS,
    GLOBAL,
    LOCAL,
    SPARSE_READ,
    SPARSE_SPAN,
    attention_grid,
    draw_pattern,
    keys_per_query_curve,
    main,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cli_writes_a_png(tmp_path: Path) -> None:
    out = main([str(tmp_path / "figures" / "pattern.png"), "--length", "40", "--num-global-tokens", "2"])
    assert out == tmp_path / "figures" / "pattern.png"
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_cli_rejects_bad_settings_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pattern.png"
    with pytest.raises(SystemExit) as info:
        main([str(out), "--block-size", "8", "--sparsity-factor", "3"])
    assert info.value.code == 2
    assert "sparsity_factor=3" in capsys.readouterr().err
    assert not out.exists()


def test_plotted_keys_per_query_equal_the_formula() -> None:
    figure = draw_pattern(40, LSGSettings(block_size=8, sparse_block_size=4, sparsity_type="stride"))
    lines = {line.get_label().split(":")[0]: line for line in figure.axes[1].get_lines()}
    defaults = LSGSettings()
    expected = defaults.num_global_tokens + 2 * defaults.sparse_block_size + 3 * defaults.block_size
    assert list(lines["LSG"].get_xdata()) == list(DEFAULT_COST_LENGTHS)
    assert list(lines["LSG"].get_ydata()) == [expected] * len(DEFAULT_COST_LENGTHS) == [641] * 6
    assert list(lines["full attention"].get_ydata()) == list(DEFAULT_COST_LENGTHS)


@pytest.mark.parametrize(
    ("settings", "lengths", "expected"),
    [
        (LSGSettings(num_global_tokens=4, sparse_block_size=0), [512, 4096], [4 + 3 * 128] * 2),
        (LSGSettings(block_size=64, sparse_block_size=32, sparsity_type="stride"), [100, 129], [1 + 100, 1 + 64 + 192]),
    ],
    ids=["local-only", "short-rule"],
)
def test_keys_per_query_curve(settings: LSGSettings, lengths: list[int], expected: list[int]) -> None:
    assert keys_per_query_curve(lengths, settings) == (expected, lengths)


@pytest.mark.parametrize("sparsity_type", ["stride", "block_stride", "pooling", "norm"])
def test_interior_row_of_the_grid_counts_keys_per_query(sparsity_type: str) -> None:
    """A query away from the edges sees G globals, 3*bs local tokens and 2*sbs sparse keys covering 2*sbs*f tokens."""
    settings = LSGSettings(block_size=8, sparse_block_size=4, sparsity_factor=2, sparsity_type=sparsity_type,
                           num_global_tokens=2)
    G, bs, sbs, f = 2, 8, 4, 2
    row = attention_grid(64, settings)[G + 3 * bs]  # first token of block 3: both sparse windows inside [0, 64)
    counts = {code: int((row == code).sum()) for code in (GLOBAL, LOCAL, SPARSE_READ, SPARSE_SPAN)}
    assert counts[GLOBAL] == G
    assert counts[LOCAL] == 3 * bs
    assert counts[SPARSE_READ] + counts[SPARSE_SPAN] == 2 * sbs * f
    if sparsity_type in ("stride", "block_stride"):  # one token per sparse key
        assert counts[GLOBAL] + counts[LOCAL] + counts[SPARSE_READ] == settings.keys_per_query()


def test_short_sequences_are_drawn_dense() -> None:
    settings = LSGSettings(block_size=8, sparse_block_size=4, sparsity_type="stride")
    grid = attention_grid(16, settings)
    assert bool((grid[1:, 1:] == LOCAL).all()) and bool((grid[0] == GLOBAL).all())
