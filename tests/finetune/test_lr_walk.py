"""The learning-rate search's walk over its grid: from the middle outwards, only as far as the dev
NLL keeps falling (torch-free: scores are given)."""

from __future__ import annotations

import math

import pytest

from ftscale.finetune.lr_search import choose, walk

GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def _walk(scores):
    calls = []

    def score(rate):
        calls.append(rate)
        return scores[GRID.index(rate)]

    order = walk(GRID, score)
    assert calls == [GRID[i] for i in order]  # each tried once, in the order returned
    return order


@pytest.mark.parametrize(
    ("scores", "order"),
    [
        ((5.0, 4.0, 3.0, 4.0, 5.0), [2, 1, 3]),  # the middle is best: three candidates
        ((5.0, 4.0, 3.5, 3.0, 3.2), [2, 1, 3, 4]),  # best one step up: it is checked above
        ((2.0, 3.0, 4.0, 5.0, 6.0), [2, 1, 3, 0]),  # falling towards the smallest rate
        ((6.0, 5.0, 4.0, 3.0, 2.0), [2, 1, 3, 4]),  # and towards the largest
        ((3.0, 3.0, 3.0, 3.0, 3.0), [2, 1, 3, 0]),  # ties go to the smaller rate
        ((5.0, 4.0, None, math.nan, None), [2, 1, 3, 0]),  # diverged: walk to smaller rates
    ],
)
def test_walk_tries_the_middle_first_and_goes_only_downhill(scores, order):
    assert _walk(scores) == order


def test_walk_on_short_grids_tries_each_rate():
    assert walk((1e-3,), lambda rate: 1.0) == [0]
    assert sorted(walk((1e-3, 1e-2), lambda rate: rate)) == [0, 1]


def test_choose_records_the_rates_tried_and_falls_back_without_a_gain():
    scores = [None, 4.0, 3.0, 3.5, None]
    tried = [GRID[2], GRID[1], GRID[3]]
    search = choose(GRID, scores, 20, base=4.5, tried=tried)
    assert search.chosen == 1e-3 and search.improved and search.tried == tuple(tried)
    assert search.to_dict()["tried"] == tried
    worse = choose(GRID, scores, 20, base=2.0, tried=tried)
    assert worse.chosen == GRID[0] and not worse.improved  # the smallest rate, said so
