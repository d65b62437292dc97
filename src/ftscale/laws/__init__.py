"""Scaling-law forms, robust fitting, held-out evaluation, bootstrap and critical data sizes.

numpy and scipy only: nothing here imports torch. The pieces, from the bottom up:

* :mod:`~ftscale.laws.forms`: law forms (``power``, ``multiplicative``, ``additive``,
  ``rectified``, ``prelearned``) and :func:`custom_form` for your own;
* :mod:`~ftscale.laws.userforms`: forms named on the command line (``FILE.py:NAME``, ``expr:``);
* :mod:`~ftscale.laws.fit`: :class:`ScalingLaw` (Huber + multi-start L-BFGS) and
  :class:`JointScalingLaw` (shared parameters across groups, the study's Eq. 2);
* :mod:`~ftscale.laws.holdout`: held-out rules and Delta_e / Delta_h;
* :mod:`~ftscale.laws.uncertainty`: intervals by bootstrap over runs;
* :mod:`~ftscale.laws.critical`: critical data sizes between methods;
* :mod:`~ftscale.laws.selection`: choosing a form without the held-out runs;
* :mod:`~ftscale.laws.diagnostics`: warnings for degenerate fits;
* :mod:`~ftscale.laws.results`: a fitted law with its held-out evaluation (:class:`FitResult`),
  its JSON record and the way back from it;
* :mod:`~ftscale.laws.compare`: all of it on a table of runs, per group and form, and critical
  points between groups;
* :mod:`~ftscale.laws.io`: saved fits and output locations.
"""

from ftscale.laws.compare import CriticalPoint, critical_points, fit_table
from ftscale.laws.critical import closed_form, critical_curve, crossings
from ftscale.laws.fit import FitWarning, JointScalingLaw, ScalingLaw
from ftscale.laws.forms import LawForm, available_forms, custom_form, get_form, register_form
from ftscale.laws.holdout import HoldoutRule, holdout_mask, mean_abs_deviation
from ftscale.laws.results import (
    FitResult,
    Fits,
    attach_bootstrap,
    bootstrap_from_record,
    bootstrap_results,
    law_from_record,
)
from ftscale.laws.selection import Selection, select_form
from ftscale.laws.uncertainty import Bootstrap, bootstrap, bootstrap_joint, bootstrap_many
from ftscale.laws.userforms import resolve_form

__all__ = [
    "Bootstrap",
    "CriticalPoint",
    "FitResult",
    "FitWarning",
    "Fits",
    "HoldoutRule",
    "JointScalingLaw",
    "LawForm",
    "ScalingLaw",
    "Selection",
    "attach_bootstrap",
    "available_forms",
    "bootstrap",
    "bootstrap_from_record",
    "bootstrap_joint",
    "bootstrap_many",
    "bootstrap_results",
    "closed_form",
    "critical_curve",
    "critical_points",
    "crossings",
    "custom_form",
    "fit_table",
    "get_form",
    "holdout_mask",
    "law_from_record",
    "mean_abs_deviation",
    "register_form",
    "resolve_form",
    "select_form",
]
