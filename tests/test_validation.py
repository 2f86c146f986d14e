"""The shared value checks: accepted values pass, rejected ones name the parameter, the value and the range."""

import pytest

from lsg.validation import check_choice, check_int, check_range


@pytest.mark.parametrize(("args", "kwargs"), [
    (("x", 1, 1), {}), (("x", 5, 1, 5), {}), (("x", -3), {}), (("x", 0.5, 0.0, 1.0), {}), (("x", 7, None, 7), {}),
])
def test_values_in_range_pass(args, kwargs):
    check_range(*args, **kwargs)


@pytest.mark.parametrize(("args", "message"), [
    (("task.warmup_ratio", 1.5, 0.0, 0.999), r"^task.warmup_ratio=1.5 is out of range: it must be in \[0.0, 0.999\]$"),
    (("block_size", 0, 1), r"^block_size=0 is out of range: it must be >= 1$"),
    (("dropout", 2, None, 1), r"^dropout=2 is out of range: it must be <= 1$"),
])
def test_values_out_of_range_raise(args, message):
    with pytest.raises(ValueError, match=message):
        check_range(*args)


def test_the_hint_follows_the_range():
    with pytest.raises(ValueError, match=r"^max_length=32 is out of range: it must be >= 64; 64 is the model's"):
        check_int("max_length", 32, 64, hint="64 is the model's own maximum length")


@pytest.mark.parametrize("value", [2.0, 2.5, "2", True, None])
def test_check_int_refuses_non_integers_bool_included(value):
    with pytest.raises(ValueError, match=rf"^block_size={value!r} must be an integer$".replace("(", r"\(")):
        check_int("block_size", value, 1)


def test_check_int_checks_the_range_too():
    check_int("num_global_tokens", 512, 1, 512)
    with pytest.raises(ValueError, match=r"num_global_tokens=513 is out of range: it must be in \[1, 512\]"):
        check_int("num_global_tokens", 513, 1, 512)


def test_check_choice_lists_the_accepted_values():
    check_choice("trainer.tune", "all", ("all", "global_tokens"))
    with pytest.raises(ValueError, match=r"^trainer.tune='everything' is not supported; use one of "
                                         r"\['all', 'global_tokens'\]$"):
        check_choice("trainer.tune", "everything", ("all", "global_tokens"))
