"""Base-model ladders: tiny LMs pretrained by ftscale, and external model families.

Entry points (imported lazily: building pulls in torch and transformers):
:func:`ftscale.models.ladder.load_config`, :func:`ftscale.models.ladder.build_ladder`,
:func:`ftscale.models.ladder.read_ladder`, :func:`ftscale.models.tokenizer.train_bpe`.
Imports inside the package point one way: :mod:`~ftscale.models.ladder_config` (config schema,
cache layout, manifest readers; no torch) <- :mod:`~ftscale.models.build` and
:mod:`~ftscale.models.external` (the builders) <- :mod:`~ftscale.models.ladder` (build
orchestration, and the public names of all three). This package never imports
``ftscale.finetune``, ``ftscale.study`` or ``ftscale.laws``.
"""
