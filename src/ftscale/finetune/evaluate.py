"""Evaluation: mean NLL per target token (the law's L), perplexity, greedy generation scores.

The loss is computed on target positions only. On the fast path the output head runs only on the
hidden states that predict a target token (the model is asked for its final hidden states and for
one position of logits), which on small-vocabulary-heavy models is most of the compute saved.
:func:`fast_path_ok` checks once per run that the fast path gives the model's own logits, and the
run falls back to full logits when it does not (soft-capped or scaled heads, unusual models).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ftscale.finetune.tasks import DeviceSplit, Encoded, sorted_batches

#: Rows of hidden states per chunk of the output head, in training and in evaluation: the logits
#: of 512 rows of a 49,152-token vocabulary are 96 MiB in float32, instead of GBs for a batch.
HEAD_ROWS = 512


def target_nll(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    fast: bool = True,
    count: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Summed NLL (nats, float32 scalar tensor) over target tokens of one right-padded batch, and
    the number of target tokens.

    ``labels`` holds the token ids where loss counts and -100 elsewhere. No attention mask is
    passed: padding sits after every real token, so causal attention never lets a real position
    see it. Leading positions a method adds (prompt tuning's virtual tokens) are dropped. On the
    fast path the output head runs on target positions only, in chunks (:func:`head_nll`).
    ``count``, the number of target tokens when the caller knows it (the host's token counts),
    lets the target positions be gathered without asking the device how many there are: on a
    GPU that question waits for every queued kernel; the positions and their order are the same.
    """
    length = input_ids.shape[1]
    target = labels[:, 1:]
    select = _target_positions(target, count)
    if fast:
        hidden = final_hidden_states(model, input_ids)
        offset = hidden.shape[1] - length
        selected = _rows(hidden[:, offset : offset + length - 1], select)
        del hidden
        nll = head_nll(model.get_output_embeddings(), selected, _rows(target, select))
        return nll, _count(select, count)
    out = model(input_ids=input_ids, use_cache=False)
    offset = out.logits.shape[1] - length
    logits = _rows(out.logits[:, offset : offset + length - 1], select)
    nll = F.cross_entropy(logits.float(), _rows(target, select), reduction="sum")
    return nll, _count(select, count)


def _target_positions(target: torch.Tensor, count: int | None) -> torch.Tensor:
    """The loss positions of ``target`` (``[batch, positions]``, -100 elsewhere): a boolean mask,
    or, with ``count`` given, their flat indices in row-major order (a stable sort puts them
    first; no device-to-host wait)."""
    mask = target != -100
    if count is None:
        return mask
    return torch.argsort((~mask).flatten().to(torch.uint8), stable=True)[:count]


def _rows(values: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """The entries of ``values`` (``[batch, positions, ...]``) at ``select`` (a mask or flat
    indices from :func:`_target_positions`), flattened over batch and positions."""
    if select.dtype == torch.bool:
        return values[select]
    return values.flatten(0, 1)[select]


def _count(select: torch.Tensor, count: int | None) -> int:
    return int(select.sum()) if count is None else count


def head_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL (nats, float32 scalar) of ``targets`` under ``head(hidden)``, never holding more
    than :data:`HEAD_ROWS` rows of logits (nor of their gradient) at once.

    A plain ``nn.Linear`` head goes through torch's chunked ``F.linear_cross_entropy`` (the
    gradient of each chunk is formed in the forward pass and the chunk's logits freed); it keeps
    float32 logits under autocast, so its loss equals the float32 reference. Hand-rolled slicing
    is left for heads that function cannot take (a PEFT-wrapped or soft-capped head) and for a
    single chunk: one chunk at a time through the module itself, which bounds evaluation's
    logits (in training autograd then keeps every chunk's logits, as an unchunked head would),
    with autocast off there too, so logits are never rounded to bf16 (a logit near 20 in bf16 is
    off by up to 0.06).
    """
    # F.linear_cross_entropy is new in torch 2.13; older releases take the slicing path.
    fused = hasattr(F, "linear_cross_entropy")
    if fused and type(head) is torch.nn.Linear and hidden.shape[0] > HEAD_ROWS:
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=HEAD_ROWS)
        return F.linear_cross_entropy(
            hidden, head.weight, targets, linear_bias=head.bias, reduction="sum", options=options
        ).float()
    # The head's own precision: float32 unless the model is held in another.
    dtype = next(head.parameters()).dtype
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        pieces = [
            F.cross_entropy(
                head(hidden[i : i + HEAD_ROWS].to(dtype)).float(),
                targets[i : i + HEAD_ROWS],
                reduction="sum",
            )
            for i in range(0, max(hidden.shape[0], 1), HEAD_ROWS)
        ]
    return torch.stack(pieces).sum() if len(pieces) > 1 else pieces[0]


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden states (after the final norm) for ``input_ids``.

    For a plain model or a PEFT method that changes weights (LoRA, IA3, ...) the decoder is called
    directly, so no other layer's states are kept; for prompt-learning methods (their virtual
    tokens are added by the PEFT wrapper) the wrapper runs and returns every layer's states, of
    which the last is taken.
    """
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
        if decoder is not None and decoder is not inner:
            return decoder(input_ids=input_ids, use_cache=False).last_hidden_state
    out = model(input_ids=input_ids, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1]


def fast_path_ok(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether the fast head path matches the model's full logits on this batch (relative
    difference under 1e-4 of the summed NLL); ``False`` also when the model rejects it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fast, _ = target_nll(model, input_ids, labels, fast=True)
            full, _ = target_nll(model, input_ids, labels, fast=False)
    except (TypeError, AttributeError, IndexError, ValueError, RuntimeError):
        return False
    finally:
        model.train(was_training)
    return bool(torch.isfinite(full)) and abs(float(fast - full)) <= 1e-4 * max(
        1.0, abs(float(full))
    )


@torch.no_grad()
def mean_nll(
    model: torch.nn.Module,
    encoded: Encoded,
    pad_id: int,
    *,
    device: torch.device | str = "cpu",
    fast: bool = True,
    tokens_per_batch: int = 8192,
    max_batch: int = 128,
    autocast_dtype: torch.dtype | None = None,
    split: DeviceSplit | None = None,
) -> tuple[float, int]:
    """Mean NLL per target token (nats/token) of ``model`` on ``encoded``, and the token count.

    Batches are length-sorted and hold at most ``tokens_per_batch`` padded tokens (tokens) and
    ``max_batch`` examples. The model is put in eval mode and restored afterwards. ``split``:
    ``encoded`` already on the device (:class:`~ftscale.finetune.tasks.DeviceSplit`; a run keeps
    its dev split there for every check), else it is put there for this call. The sum stays on
    the device until the end (float64; float32 on MPS, which has no float64).
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    split = split or DeviceSplit(encoded, pad_id, device)
    batches = sorted_batches(encoded.lengths, tokens_per_batch, max_batch)
    order = split.index([i for rows in batches for i in rows])
    # float64 sums (MPS has no float64: float32 there)
    wide = torch.float32 if device.type == "mps" else torch.float64
    total = torch.zeros((), dtype=wide, device=device)
    count, start = 0, 0
    try:
        for rows in batches:
            index, start = order[start : start + len(rows)], start + len(rows)
            input_ids, labels, _, n = split.batch(index, rows)
            with autocast(device, autocast_dtype):
                nll, _ = target_nll(model, input_ids, labels, fast=fast, count=n)
            total += nll.to(wide)
            count += n
    finally:
        model.train(was_training)
    return float(total / max(count, 1)), count


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` on ``device`` (``None``: autocast off, plain float32)."""
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    encoded: Encoded,
    indices: Sequence[int],
    *,
    tokenizer,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    context: int | None = None,
) -> list[str]:
    """Greedy continuations (decoded text, stripped) of the prompts of ``encoded[indices]``.

    Prompts are left-padded in length-sorted batches of ``batch_size`` examples; generation stops
    at the end token or after ``max_new_tokens`` tokens, or where the batch reaches ``context``
    tokens (the model's limit, so transformers never generates past it). Returned in the order of
    ``indices``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out_text: dict[int, str] = {}
    order = sorted(indices, key=lambda i: -len(encoded.prompt_ids[i]))
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            input_ids, attention = _left_padded(encoded, batch, pad_id)
            longest = input_ids.shape[1]
            room = max_new_tokens if context is None else min(max_new_tokens, context - longest)
            with autocast(device, autocast_dtype):
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    generation_config=_greedy_settings(room, pad_id, eos_id),
                )
            output = output.cpu()
            if output.shape[1] >= longest and torch.equal(output[:, :longest], input_ids):
                output = output[:, longest:]
            for row, index in enumerate(batch):
                out_text[index] = _decoded(output[row].tolist(), eos_id, tokenizer)
    finally:
        model.train(was_training)
    return [out_text[i] for i in indices]


def _left_padded(
    encoded: Encoded, batch: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's prompts left-padded to the longest: ``(input_ids, attention_mask)``."""
    longest = max(len(encoded.prompt_ids[i]) for i in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, index in enumerate(batch):
        ids = encoded.prompt_ids[index]
        input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, longest - len(ids) :] = 1
    return input_ids, attention


def _greedy_settings(room: int, pad_id: int, eos_id: int | None):
    """Greedy decoding of up to ``room`` new tokens (at least one)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max(1, room),
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )


def _decoded(ids: list[int], eos_id: int | None, tokenizer) -> str:
    """Generated ids up to the end token, decoded and stripped."""
    if eos_id is not None and eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W_]+", re.UNICODE)


class _UnicodeTokenizer:
    """Word tokenizer for ROUGE that keeps non-ASCII words (rouge-score's default drops them):
    lower-cased runs of letters/digits, and each CJK character as its own token."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


@dataclass(frozen=True)
class GenerationScores:
    """Corpus scores of greedy outputs against references, each on a 0-100 scale."""

    bleu: float
    chrf: float
    rouge_l: float


def score_generations(
    hypotheses: Sequence[str], references: Sequence[str], bleu_tokenize: str = "13a"
) -> GenerationScores:
    """Corpus BLEU and chrF (sacrebleu, default settings, ``bleu_tokenize`` for BLEU: ``13a``,
    ``zh``, ``intl``, ...) and mean ROUGE-L F1 (rouge-score, Unicode-aware word tokens, no
    stemming), all scaled to 0-100."""
    import sacrebleu
    from rouge_score import rouge_scorer

    hyps, refs = list(hypotheses), list(references)
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=bleu_tokenize).score
    chrf = sacrebleu.corpus_chrf(hyps, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hyps, refs, strict=True)]
    rouge_l = 100.0 * sum(rouge) / len(rouge) if rouge else 0.0
    return GenerationScores(float(bleu), float(chrf), float(rouge_l))


def perplexity(nll: float) -> float:
    """Perplexity ``exp(nll)`` of a mean NLL per token (nats); ``inf`` on overflow."""
    try:
        return math.exp(nll)
    except OverflowError:
        return math.inf
