"""Validation of the LSG parameters: clear errors naming the parameter, value and accepted range (design D16)."""

import pytest

from lsg.settings import LSGSettings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 0}, r"block_size=0 is out of range: it must be >= 1"),
        ({"block_size": 2.5}, r"block_size=2.5 must be an integer"),
        ({"sparse_block_size": -1}, r"sparse_block_size=-1"),
        ({"sparsity_factor": 256}, r"sparsity_factor=256 must divide block_size=128"),
        ({"sparsity_factor": 3}, r"use one of \[1, 2, 4, 8, 16, 32, 64, 128\]"),
        ({"sparsity_type": "random"}, r"sparsity_type='random' is not supported"),
        ({"num_global_tokens": 0}, r"num_global_tokens=0 is out of range: it must be in \[1, 512\]"),
        ({"num_global_tokens": 600}, r"num_global_tokens=600"),
        ({"lsh_num_pre_rounds": -2}, r"lsh_num_pre_rounds=-2"),
        ({"mask_first_token": True, "pool_with_global": False}, r"mask_first_token=True needs pool_with_global"),
        ({"sparsity_type": "norm", "sparse_block_size": 48}, r"sparse_block_size=48 is smaller than block_size=128"),
        ({"sparsity_type": "lsh", "sparse_block_size": 2, "sparsity_factor": 4}, r"multiple of sparsity_factor=4"),
    ],
)
def test_bad_values_raise_with_the_parameter_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LSGSettings(**kwargs)


@pytest.mark.parametrize("spelling", [None, "none", "None"])
def test_local_only_has_three_spellings(spelling):
    assert LSGSettings(sparsity_type=spelling).sparsity_type == "none"
    assert not LSGSettings(sparsity_type=spelling).sparse_enabled
    assert not LSGSettings(sparse_block_size=0).sparse_enabled
    assert not LSGSettings(sparsity_factor=0, block_size=7).sparse_enabled


def test_sparse_settings_are_not_checked_when_sparse_is_off():
    """A block size that f cannot divide is fine once the sparse part is disabled."""
    assert LSGSettings(block_size=7, sparsity_factor=2, sparsity_type=None).block_size == 7


def test_keys_per_query_formula():
    """Spec §4: defaults see 641 keys; the paper's Local 256/0 sees 769."""
    assert LSGSettings().keys_per_query() == 641
    assert LSGSettings(block_size=256, sparsity_type=None).keys_per_query() == 769
