"""The study runner: a study file in; plan, resumable runs in a SQLite store (locally, in a
process pool or on Ray), the study's analysis, a recommendation and a report out.

* :mod:`~ftscale.study.config`: the study file (TOML, validated);
* :mod:`~ftscale.study.plan`: the runs of the study's sweeps, as run specs;
* :mod:`~ftscale.study.store`: the SQLite store;
* :mod:`~ftscale.study.executors`: ``local``, ``process``, ``ray`` (registered by name);
* :mod:`~ftscale.study.runner`: run, status, export;
* :mod:`~ftscale.study.analysis`: joint fits, held-out errors, critical sizes, findings;
* :mod:`~ftscale.study.recommend`: the best method at a point, the cost to reach a loss.
"""
