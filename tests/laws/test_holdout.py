"""Held-out rules: extremes, the middle value, lists of values, skipping a rule that would leave
too few values to fit, and what happens when a rule matches nothing."""

import numpy as np
import pytest

from ftscale.errors import UserError
from ftscale.laws import HoldoutRule, holdout_mask

COLUMNS = {
    "params": np.array([1e6, 1e6, 4e6, 4e6, 1.6e7, 1.6e7, 6.4e7, 6.4e7]),
    "examples": np.array([100, 200] * 4, float),
    "rung": np.array(["m16", "m16", "m24", "m24", "m32", "m32", "m48", "m48"], dtype=object),
}


def held_params(rules, columns=COLUMNS, **kwargs):
    mask = holdout_mask(rules, columns, **kwargs)
    return sorted(set(columns["params"][mask].tolist()))


def test_middle_holds_out_the_middle_distinct_value():
    # Four distinct values: the upper of the two middle ones.
    assert held_params("middle:params") == [1.6e7]
    odd = {k: v[:6] for k, v in COLUMNS.items()}
    assert held_params("middle:params", odd) == [4e6]
    assert HoldoutRule.parse("middle:params") == [HoldoutRule("middle", "params")]


def test_list_rule_matches_text_and_numbers_as_numbers():
    assert held_params([HoldoutRule("in", "rung", values=("m16", "m48"))]) == [1e6, 6.4e7]
    # Integers given for a float column, as a study file lists token counts.
    assert held_params([HoldoutRule("in", "params", values=(4_000_000, 64_000_000))]) == [
        4e6,
        6.4e7,
    ]
    with pytest.raises(UserError, match="column is numeric, value 'big' is not"):
        holdout_mask([HoldoutRule("in", "params", values=("big",))], COLUMNS)


def test_min_left_skips_a_rule_that_would_leave_too_few_values():
    two = {k: v[:4] for k, v in COLUMNS.items()}  # params 1e6 and 4e6 only
    assert held_params([HoldoutRule("max", "params", min_left=2)], two) == []
    assert held_params([HoldoutRule("max", "params")], two) == [4e6]
    three = {k: v[:6] for k, v in COLUMNS.items()}
    assert held_params([HoldoutRule("max", "params", min_left=2)], three) == [1.6e7]
    # Two distinct D_f: holding out the larger would leave one, so nothing is held out by it.
    rule = HoldoutRule("max", "examples", min_left=2)
    assert not holdout_mask([rule], COLUMNS).any()


def test_min_left_applies_within_each_group():
    columns = {
        "params": np.array([1, 2, 3, 1, 2], float),
        "method": np.array(["fmt", "fmt", "fmt", "lora", "lora"], dtype=object),
    }
    mask = holdout_mask([HoldoutRule("max", "params", min_left=2)], columns, columns["method"])
    assert mask.tolist() == [False, False, True, False, False]


def test_a_rule_that_matches_nothing_is_an_error_unless_told_otherwise():
    with pytest.raises(UserError, match="holdout rule rung=m99 matches no row"):
        holdout_mask("rung=m99", COLUMNS)
    rule = HoldoutRule("in", "rung", values=("m99",))
    with pytest.raises(UserError, match=r"rung in \[m99\] matches no row"):
        holdout_mask([rule], COLUMNS)
    assert not holdout_mask([rule], COLUMNS, require_match=False).any()


def test_rules_combine_as_a_union():
    rules = [HoldoutRule("max", "params", min_left=2), HoldoutRule("max", "examples", min_left=2)]
    # 200 examples is one of two D_f values, so only the largest model is held out.
    assert held_params(rules) == [6.4e7]
    mask = holdout_mask("max:params,min:examples", COLUMNS)
    assert mask.sum() == 2 + 3  # both runs of the largest model, one 100-example run per other
