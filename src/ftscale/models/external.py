"""External model families: Hugging Face model ids or local directories, with revisions.

An external ladder (``kind = "external"``) lists models instead of shapes, e.g. a Pythia-like
suite whose sizes are the model-size axis and whose intermediate-step revisions (git branches such
as ``step1000``) are the pretraining-data axis. Sizes come from the models themselves: each config
is instantiated on PyTorch's ``meta`` device, so counting parameters downloads ``config.json``
only, not the weights. Nothing is copied: each manifest points at the model id (or absolute local
path) and revision that ``ftscale finetune`` will load. With ``val_tokens > 0`` the weights are
loaded once to measure validation loss on the built-in held-out text, in each model's own tokens.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ftscale.common import first_line, write_json_atomic
from ftscale.errors import UserError
from ftscale.models.ladder_config import MANIFEST_FILE, LadderConfig, OnCheckpoint
from ftscale.models.pretrain import count_params, eval_loss


def resolve_model(model: str) -> tuple[str, bool]:
    """``(reference, is_local)``: an absolute directory for an existing local path, else the hub
    id unchanged."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"{model}: is a file, expected a model directory (with config.json) or a hub id"
            )
        if not (path / "config.json").is_file():
            raise UserError(f"{model}: local model directory has no config.json")
        return str(path.resolve()), True
    if model.startswith((".", "/", "~")):
        raise UserError(f"{model}: no such local model directory")
    return model, False


def check_external(config: LadderConfig) -> None:
    """Check what can be checked before anything is written: every local model path exists and
    is a model directory (hub ids are checked when their config is fetched)."""
    for rung in config.external:
        try:
            resolve_model(rung.model)
        except UserError as exc:
            raise UserError(f"ladder {config.name}: external {rung.name!r}: {exc}") from None


def _load_config(ref: str, revision: str | None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref, revision=revision)
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        at = f"@{revision}" if revision else ""
        raise UserError(f"{ref}{at}: cannot load model config: {first}") from None


def model_param_counts(ref: str, revision: str | None = None) -> dict[str, int]:
    """Parameter counts (total, embedding, nonembedding; parameters) of a causal LM from its
    config alone, built on the ``meta`` device (no weights are read or downloaded)."""
    from transformers import AutoModelForCausalLM

    config = _load_config(ref, revision)
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError as exc:
            raise UserError(f"{ref}: not a causal language model ({exc})") from None
    return count_params(model)


def validation_loss(ref: str, revision: str | None, val_tokens: int) -> float:
    """Mean next-token NLL (nats per token, in the model's own tokenizer) of a model on the first
    ``val_tokens`` tokens of the built-in pretraining validation text (held-out books)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftscale.data.corpus import pretraining_documents

    try:
        tok = AutoTokenizer.from_pretrained(ref, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(ref, revision=revision)
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise UserError(f"{ref}: cannot load model: {first}") from None
    seq_len = min(512, getattr(model.config, "max_position_embeddings", 512) or 512)
    ids: list[int] = []
    for doc in pretraining_documents("val"):
        ids.extend(tok(doc, add_special_tokens=False)["input_ids"])
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
        if len(ids) >= val_tokens:
            break
    n = max(1, min(len(ids), val_tokens) // seq_len)
    blocks = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return eval_loss(model, blocks, batch_size=8)


def _label(revision: str | None) -> str:
    return "default" if revision is None else re.sub(r"[^A-Za-z0-9_.-]", "_", revision)


def build_external(
    config: LadderConfig,
    out: Path,
    *,
    progress: bool = True,
    on_checkpoint: OnCheckpoint | None = None,
) -> dict:
    """Write one manifest per (model, revision) of an external ladder into ``out``; return the
    ladder summary (relative checkpoint paths)."""
    checkpoints: list[str] = []
    jobs = [
        (rung, rev)
        for rung in config.external
        for rev in (rung.revisions or [None])
    ]
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not progress,
    ) as bar:
        task = bar.add_task("inspect models", total=len(jobs))
        for rung, rev in jobs:
            ref, local = resolve_model(rung.model)
            revision = rev.revision if rev is not None else None
            counts = model_param_counts(ref, revision)
            tokens = (rev.tokens if rev is not None else None) or rung.tokens
            val = validation_loss(ref, revision, config.val_tokens) if config.val_tokens else None
            rel = f"{rung.name}/{_label(revision)}"
            (out / rel).mkdir(parents=True)
            manifest = {
                "rung": rung.name,
                "tokens_seen": tokens,
                "total_params": counts["total"],
                "nonembedding_params": counts["nonembedding"],
                "embedding_params": counts["embedding"],
                "train_loss": None,
                "val_loss": None if val is None else round(val, 6),
                "path": ref,
                "revision": revision,
                "source": "local" if local else "hub",
            }
            write_json_atomic(out / rel / MANIFEST_FILE, manifest)
            checkpoints.append(rel)
            if on_checkpoint is not None:
                on_checkpoint(rung.name, tokens or 0, out / rel)
            bar.advance(task)
    rungs = {r.name: {"model": r.model} for r in config.external}
    return {"checkpoints": checkpoints, "rungs": rungs}
