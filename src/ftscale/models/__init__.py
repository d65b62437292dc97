"""Base-model ladders: tiny LMs pretrained by ftscale, and external model families.

Entry points (imported lazily: they pull in torch and transformers):
:func:`ftscale.models.ladder.load_config`, :func:`ftscale.models.ladder.build_ladder`,
:func:`ftscale.models.ladder.read_ladder`, :func:`ftscale.models.tokenizer.train_bpe`.
This package never imports ``ftscale.finetune``, ``ftscale.study`` or ``ftscale.laws``.
"""
