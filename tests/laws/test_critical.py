"""Critical data sizes: zero, one or two crossings found by bracketing; the closed form."""

import numpy as np
import pytest

from ftscale.errors import UserError
from ftscale.laws import ScalingLaw, closed_form, critical_curve, crossings


def law(form, **params):
    return ScalingLaw.from_params(form, params)


def test_no_crossing_when_one_method_is_better_everywhere():
    better = law("power", A=10.0, beta=0.3, E=1.0)
    worse = law("power", A=20.0, beta=0.3, E=1.2)
    assert crossings(better, worse, d_range=(1.0, 1e9)) == []


def test_one_crossing_matches_the_analytic_value():
    # 10/D^0.1 + 1 = 40/D^0.3 + 1  =>  D^0.2 = 4  =>  D = 4^5 = 1024.
    slow, fast = law("power", A=10.0, beta=0.1, E=1.0), law("power", A=40.0, beta=0.3, E=1.0)
    assert crossings(slow, fast) == [pytest.approx(1024.0, rel=1e-9)]


def test_two_crossings_when_e_differs():
    # A steep law with a higher floor crosses a shallow one twice: first overtaking, then
    # falling behind as its E takes over.
    shallow = law("power", A=3.0, beta=0.1, E=1.0)
    steep = law("power", A=200.0, beta=0.6, E=1.5)
    found = crossings(shallow, steep, d_range=(1.0, 1e12))
    assert len(found) == 2
    for d in found:
        assert shallow.predict([d])[0] == pytest.approx(steep.predict([d])[0], rel=1e-9)
    middle = np.sqrt(found[0] * found[1])
    assert steep.predict([middle])[0] < shallow.predict([middle])[0]


def test_closed_form_equals_numeric_crossing_and_is_a_power_law_in_x():
    fmt = law("multiplicative", A=1.2e5, alpha=0.52, E=0.7, beta=0.15)
    lora = law("multiplicative", A=2.1e3, alpha=0.36, E=0.7, beta=0.081)
    h, gamma = closed_form(fmt, lora)
    assert gamma == pytest.approx((0.36 - 0.52) / (0.15 - 0.081))
    xs = [1e9, 2e9, 4e9, 8e9, 16e9]
    curve = critical_curve(fmt, lora, xs, d_range=(1e-6, 1e30))
    for x, found in zip(xs, curve, strict=True):
        assert found == [pytest.approx(h * x**gamma, rel=1e-8)]


def test_closed_form_refuses_unequal_e_unless_asked():
    a = law("multiplicative", A=1e3, alpha=0.3, E=0.7, beta=0.2)
    b = law("multiplicative", A=1e2, alpha=0.2, E=0.6, beta=0.1)
    with pytest.raises(UserError, match="needs equal E"):
        closed_form(a, b)
    assert closed_form(a, b, check_e=False)[1] == pytest.approx((0.2 - 0.3) / (0.2 - 0.1))
    with pytest.raises(UserError, match="needs multiplicative laws"):
        closed_form(law("power", A=1.0, beta=0.1, E=1.0), b)


def test_two_variable_law_needs_x():
    a = law("multiplicative", A=1e3, alpha=0.3, E=0.7, beta=0.2)
    with pytest.raises(UserError, match="needs a value of X"):
        crossings(a, a)
    with pytest.raises(UserError, match="0 < low < high"):
        crossings(a, a, 1e9, d_range=(10.0, 1.0))


def test_closed_form_with_nearly_equal_betas_is_refused_not_overflowed():
    # 1/(beta1 - beta2) = 1e9: (A1/A2)^1e9 is far beyond float range.
    a = law("multiplicative", A=1e3, alpha=0.3, E=0.7, beta=0.2 + 1e-9)
    b = law("multiplicative", A=1e2, alpha=0.2, E=0.7, beta=0.2)
    with pytest.raises(UserError, match="out of float range"):
        closed_form(a, b)
