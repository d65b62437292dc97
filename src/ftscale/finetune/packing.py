"""Many runs as one computation: the runs of a pack train, are checked on dev and tested together.

A *pack* is a list of runs that share a base architecture, a method and its structure (LoRA of any
rank, prompt tuning of one length, full-model tuning of any checkpoint), the data and the
evaluation settings; they may differ in D_f, subset seed, seed, learning rate, schedule and
budget, and, for full-model tuning, in base checkpoint. Each member is an ordinary run of
:mod:`ftscale.finetune.recipe` (set up exactly as alone, so its initial state is the one it would
have alone) and keeps its own data order, optimizer, schedule, dev checks, early stopping and best
state. What is shared is the computation: one forward and one backward per step for every member
still training (``torch.func.functional_call`` under ``torch.func.vmap`` over the members'
trainable tensors; frozen tensors the members share enter once), one packed pass per dev check
and per test split. A member that stops (budget, patience, a NaN loss) leaves the pack; the
others go on.

LoRA members of different ranks are packed by zero-padding A's rows and B's columns to the largest
rank: the padded parts take no gradient (their partners are zero), so they stay zero and change
nothing. Members must agree on LoRA's scaling (alpha / rank; 2 for the default alpha = 2 rank).

Numbers: a member's record equals the record of the same run trained alone up to float rounding
(batches are padded to the pack's longest sequence; causal attention never lets a real position
see the padding), checked in ``tests/finetune/test_packing.py``.

Generation and the extra eval sets run per member on its own model (a few percent of a run).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ftscale.finetune import recipe
from ftscale.finetune.evaluate import autocast, final_hidden_states
from ftscale.finetune.memory import MIB, decoder_layers, default_budget, held_memory
from ftscale.finetune.precision import precision_name
from ftscale.finetune.recipe import Run, RunFailed
from ftscale.finetune.record import RunRecord
from ftscale.finetune.spec import FinetuneJob
from ftscale.finetune.tasks import Encoded, collate, sorted_batches
from ftscale.models.loading import load_model, resolve_device

#: Rows of hidden states sent through the output head at once during packed evaluation (as
#: :data:`ftscale.finetune.evaluate.HEAD_ROWS`, shared among the members evaluated together).
HEAD_ROWS = 512


class _Hidden(torch.nn.Module):
    """The template model's last hidden states as a module's forward, for ``functional_call``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return final_hidden_states(self.model, input_ids)


@dataclass
class _Tensors:
    """The functional view of the members: trainable tensor names (the same in every member),
    each member's trainable tensors, and the frozen tensors, shared (one tensor) or, when the
    members' bases differ, stacked once."""

    names: list[str]
    shared: dict[str, torch.Tensor]
    stacked: dict[str, torch.Tensor]
    head: str
    head_bias: str | None


class Pack:
    """Members (set-up :class:`~ftscale.finetune.recipe.Run` values) trained as one computation;
    see the module docs. Build with :func:`pack_runs` (it checks they can share a pack)."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.template = _Hidden(runs[0].model)
        self.device = runs[0].device
        self.tensors = _functional_tensors(runs)
        self.pad = runs[0].pad
        #: Each member's share of the packed training steps' seconds, by member index.
        self.train_s = [0.0] * len(runs)

    # -- the members' tensors, as the functional call takes them --------------------------------
    def _trainable(self, members: Sequence[Run]) -> dict[str, torch.Tensor]:
        """Each trainable tensor stacked over ``members`` (LoRA ranks zero-padded)."""
        out = {}
        for i, name in enumerate(self.tensors.names):
            parts = [m.params[i] for m in members]
            out[name] = torch.stack(_pad_to_largest(parts))
        return out

    def _frozen(self, members: Sequence[Run]) -> tuple[dict, dict]:
        """``(shared frozen tensors, frozen tensors stacked over members)``."""
        index = [self.runs.index(m) for m in members]
        stacked = {k: v[index] for k, v in self.tensors.stacked.items()}
        return self.tensors.shared, stacked

    def hidden(self, members: Sequence[Run], input_ids: torch.Tensor, shared_input: bool):
        """Last hidden states ``[members, batch, positions, width]`` of each member on its own
        batch (``input_ids [members, batch, length]``) or on one batch for all."""
        trainable = self._trainable(members)
        shared, stacked = self._frozen(members)

        def one(train, frozen, ids):
            params = {f"model.{k}": v for k, v in {**shared, **frozen, **train}.items()}
            return functional_call(self.template, params, (ids,), tie_weights=True)

        dims = (0, 0, None if shared_input else 0)
        with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no vmap batching rule
            return vmap(one, in_dims=dims)(trainable, stacked, input_ids)

    def head_weight(self, members: Sequence[Run]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output head's weight (``[V, width]``, or ``[members, V, width]`` when each member
        has its own) and bias."""
        name, bias = self.tensors.head, self.tensors.head_bias

        def tensor(key: str | None):
            if key is None:
                return None
            if key in self.tensors.names:
                return torch.stack([m.params[self.tensors.names.index(key)] for m in members])
            if key in self.tensors.stacked:
                return self._frozen(members)[1][key]
            return self.tensors.shared[key]

        return tensor(name), tensor(bias)

    def target_nll(self, members, input_ids, labels, *, shared_input=False):
        """Summed NLL over target tokens per member (``[members]``, float32) and target-token
        counts (``[members]``); ``labels`` are per member (``[members, batch, length]``)."""
        length = input_ids.shape[-1]
        hidden = self.hidden(members, input_ids, shared_input)
        offset = hidden.shape[2] - length
        hidden = hidden[:, :, offset : offset + length - 1]
        target = labels[..., 1:]
        weight, bias = self.head_weight(members)
        return _head_nll(hidden, target, weight, bias)


def _head_nll(hidden, target, weight, bias) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the head on the target positions only (-100 elsewhere): each member's
    target positions gathered (padded to the most any member has), the head applied to those
    rows alone, as the fast path of :func:`ftscale.finetune.evaluate.target_nll` does."""
    k, width = hidden.shape[0], hidden.shape[-1]
    mask = (target != -100).reshape(k, -1)
    counts = mask.sum(1)
    most = int(counts.max())
    order = torch.argsort(~mask, dim=1, stable=True)[:, :most]  # target positions first
    valid = torch.arange(most, device=hidden.device)[None, :] < counts[:, None]
    rows = torch.gather(hidden.reshape(k, -1, width), 1, order[..., None].expand(-1, -1, width))
    goal = torch.gather(target.reshape(k, -1), 1, order).clamp_min(0)
    total = torch.zeros(k, dtype=torch.float32, device=hidden.device)
    step = most if torch.is_grad_enabled() else max(1, HEAD_ROWS // max(1, k))
    for start in range(0, most, step):
        part = slice(start, start + step)
        logits = _apply_head(rows[:, part], weight, bias)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            goal[:, part].reshape(-1),
            reduction="none",
        )
        total = total + (nll.view(k, -1) * valid[:, part]).sum(1)
    return total, counts


def _apply_head(rows, weight, bias):
    logits = torch.matmul(rows, weight.transpose(-1, -2))
    if bias is not None:
        logits = logits + (bias[:, None, :] if bias.dim() == 2 else bias)
    return logits


def _pad_to_largest(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Tensors zero-padded at the end of each dimension to the largest (LoRA ranks)."""
    shape = [max(sizes) for sizes in zip(*(p.shape for p in parts), strict=True)]
    out = []
    for part in parts:
        room = [n - m for n, m in zip(shape, part.shape, strict=True)]
        if any(room):
            spec = [x for r in reversed(room) for x in (0, r)]
            part = F.pad(part, spec)
        out.append(part)
    return out


def _functional_tensors(runs: list[Run]) -> _Tensors:
    """Names and tensors of the functional call (see :class:`_Tensors`)."""
    first = runs[0].model
    named = dict(first.named_parameters())
    ids = {id(p): n for n, p in named.items()}
    names = [ids[id(p)] for p in runs[0].params]
    shared: dict[str, torch.Tensor] = {}
    stacked: dict[str, torch.Tensor] = {}
    per_run = [dict(r.model.named_parameters()) for r in runs]
    for name in named:
        if name in names:
            continue
        values = [p[name].detach() for p in per_run]
        if all(v is values[0] or torch.equal(v, values[0]) for v in values[1:]):
            shared[name] = values[0]
        else:
            stacked[name] = torch.stack(values)
    for name, buffer in first.named_buffers():
        shared[name] = buffer
    head = first.get_output_embeddings()
    every = {id(p): n for n, p in first.named_parameters(remove_duplicate=True)}
    bias = getattr(head, "bias", None)
    return _Tensors(names, shared, stacked, every[id(head.weight)], every.get(id(bias)))


# -- checking that runs can share a pack -----------------------------------------------------------


def pack_problem(runs: Sequence[Run]) -> str | None:
    """Why these set-up runs cannot train as one pack (None: they can)."""
    first = runs[0]
    checks = [
        (all(r.fast for r in runs), "the output head is not a plain linear layer on every run"),
        (len({r.device for r in runs}) == 1, "members on different devices"),
        (len({r.config.batch_size for r in runs}) == 1, "different batch sizes"),
        (len({r.inputs.method.name for r in runs}) == 1, "different methods"),
        (_same_structure(runs), "different trainable structures (or LoRA scalings)"),
        (all(_same_encoded(r.dev, first.dev) for r in runs), "different dev sets"),
        (all(_same_encoded(r.test, first.test) for r in runs), "different test sets"),
        (all(not _has_dropout(r.model) for r in runs), "dropout (its noise cannot be packed)"),
    ]
    return next((why for ok, why in checks if not ok), None)


def _same_structure(runs: Sequence[Run]) -> bool:
    reference = dict(runs[0].model.named_parameters())
    scale = _lora_scaling(runs[0].model)
    for run in runs[1:]:
        named = dict(run.model.named_parameters())
        if set(named) != set(reference) or _lora_scaling(run.model) != scale:
            return False
        for name, p in named.items():
            q = reference[name]
            if p.requires_grad != q.requires_grad or p.dim() != q.dim():
                return False
            if "lora_" not in name and p.shape != q.shape:
                return False
    return True


def _lora_scaling(model) -> list[float]:
    """LoRA's scaling (alpha / rank) of every adapted layer (PEFT keeps it per adapter)."""
    out = []
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict):
            out += [float(v) for v in scaling.values()]
    return out


def _has_dropout(model) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def _same_encoded(a: Encoded, b: Encoded) -> bool:
    return a.ids == b.ids and a.prompt_lengths == b.prompt_lengths


# -- training a pack -------------------------------------------------------------------------------


def train_pack(pack: Pack, progress: Any = None) -> None:
    """Train every member to its end (budget, patience or failure): one packed step at a time,
    packed dev checks for the members due one, each member's own bookkeeping
    (:mod:`ftscale.finetune.recipe`'s loop pieces)."""
    active = list(pack.runs)
    _packed_dev(pack, active, 0, first=True)
    active = [r for r in active if r.record.status == "ok"]
    for run in active:
        recipe.start_loop(run, run.record.dev_history[-1][1])
    total = max((r.record.max_steps for r in active), default=0)
    if progress is not None:
        progress.start(total, f"pack of {len(active)} {pack.runs[0].inputs.method.name}")
    while active:
        began = time.perf_counter()
        loss = _packed_step(pack, active)
        for run in active:
            pack.train_s[pack.runs.index(run)] += (time.perf_counter() - began) / len(active)
        if progress is not None and loss is not None:
            progress.step(max(r.record.steps for r in active), loss)
        running = [r for r in active if r.record.status == "ok"]
        due = [r for r in running if recipe.dev_due(r)]
        stopped = _packed_dev(pack, due, None) if due else []
        done = [r for r in active if r.record.status != "ok" or r in stopped or _spent(r)]
        for run in done:
            if run.record.status == "ok":
                recipe.end_loop(run)
                run.record.train_s = pack.train_s[pack.runs.index(run)]
        active = [r for r in active if r not in done]


def _spent(run: Run) -> bool:
    return run.record.steps >= run.record.max_steps


def _packed_step(pack: Pack, active: list[Run]) -> float | None:
    """One optimizer step of every active member on its own next batch; a member whose loss is
    NaN or infinite fails (its record says so) and the others step. Returns the mean loss."""
    batches = [recipe.next_batch(r) for r in active]
    parts = [collate(r.train, b, r.pad) for r, b in zip(active, batches, strict=True)]
    input_ids, labels = _stack_batches([(ids, lab) for ids, lab, _ in parts], pack.pad)
    input_ids, labels = input_ids.to(pack.device), labels.to(pack.device)
    for run in active:
        recipe.set_rate(run)
        run.phase = "training"
        run.loop.optimizer.zero_grad(set_to_none=True)
    with autocast(pack.device, active[0].autocast):
        nll, counts = pack.target_nll(active, input_ids, labels)
    losses = nll / counts
    finite = torch.isfinite(losses).tolist()
    for run, ok, loss in zip(active, finite, losses.detach().tolist(), strict=True):
        if not ok:
            step = run.record.steps + 1
            _fail(run, f"non-finite training loss ({loss}) at step {step}", step)
    if not any(finite):
        return None
    kept = torch.tensor(finite, device=losses.device)
    torch.where(kept, losses, torch.zeros_like(losses)).sum().backward()
    for run, ok, (ids, _, real), count in zip(active, finite, parts, counts.tolist(), strict=True):
        if ok:
            recipe.update(run, real=real, count=int(count), padded=ids.numel())
    return float(losses.detach()[kept].mean())


def _stack_batches(batches, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Members' batches (each right-padded to its own longest) padded to one shape: more
    positions of padding (no loss), and rows of padding where a member's batch is short."""
    rows = max(ids.shape[0] for ids, _ in batches)
    length = max(ids.shape[1] for ids, _ in batches)
    input_ids = torch.full((len(batches), rows, length), pad, dtype=torch.long)
    labels = torch.full((len(batches), rows, length), -100, dtype=torch.long)
    for k, (ids, lab) in enumerate(batches):
        input_ids[k, : ids.shape[0], : ids.shape[1]] = ids
        labels[k, : lab.shape[0], : lab.shape[1]] = lab
    return input_ids, labels


def _packed_dev(pack: Pack, members: list[Run], step: int | None, first: bool = False):
    """A dev check of ``members`` together; the ones that stop early (patience) are returned.
    A non-finite dev loss fails that member."""
    if not members:
        return []
    values = _packed_nll(pack, members, members[0].dev, "dev")
    stopped = []
    for run, value in zip(members, values, strict=True):
        at = 0 if first else run.record.steps
        try:
            recipe.record_dev(run, at, value)
        except RunFailed as failure:
            _fail(run, failure.reason, failure.step)
            continue
        if not first and recipe.after_dev(run, value):
            stopped.append(run)
    return stopped


@torch.no_grad()
def _packed_nll(pack: Pack, members: list[Run], encoded: Encoded, what: str) -> list[float]:
    """Mean NLL per target token of each member on ``encoded`` (one pass for all; sums in
    float64 as :func:`ftscale.finetune.evaluate.mean_nll`), timed into each member's
    ``eval_time``."""
    began = time.perf_counter()
    for run in members:
        run.phase = f"checking {what}"
        run.model.eval()
    totals = torch.zeros(len(members), dtype=torch.float64)
    count = 0
    budget = members[0].config.eval_tokens_per_batch
    try:
        for indices in sorted_batches(encoded.lengths, budget, 128):
            ids, labels, _ = collate(encoded, indices, pack.pad)
            ids, labels = ids.to(pack.device), labels.to(pack.device)
            with autocast(pack.device, members[0].autocast):
                nll, counts = pack.target_nll(
                    members, ids, labels.expand(len(members), -1, -1), shared_input=True
                )
            totals += nll.double().cpu()
            count += int(counts[0])
    finally:
        for run in members:
            run.model.train()
    for run in members:  # each member's share, so a pack's runs add up to its wall time
        run.eval_time += (time.perf_counter() - began) / len(members)
    return (totals / max(count, 1)).tolist()


def _fail(run: Run, reason: str, step: int) -> None:
    recipe._fail(run, reason, step)


# -- evaluating a pack -----------------------------------------------------------------------------


def evaluate_pack(pack: Pack) -> None:
    """Best states restored, the test split scored for every member in one pass, then each
    member's generation and extra eval sets (on its own model)."""
    members = [r for r in pack.runs if r.record.status == "ok"]
    for run in members:
        recipe.restore_best(run)
    if members:
        values = _packed_nll(pack, members, members[0].test, "the test split")
        tokens = members[0].test.target_tokens
        for run, value in zip(members, values, strict=True):
            try:
                recipe.record_test(run, value, tokens)
                recipe.finish_evaluation(run)
            except RunFailed as failure:
                _fail(run, failure.reason, failure.step)


# -- the entry point -------------------------------------------------------------------------------


def run_pack(jobs: Sequence[FinetuneJob], progress: Any = None) -> list[RunRecord]:
    """Run ``jobs`` as packs and return their records, in order (each with ``key`` and ``job``,
    as :func:`ftscale.finetune.recipe.run_job` gives). A pack takes members while their estimated
    footprints (:func:`footprint`) fit :func:`memory_budget`; the jobs left over form the next
    pack. Jobs that cannot share a pack (see :func:`pack_problem`), a pack of one,
    ``learning_rate = "auto"`` and a pack that runs out of memory after all run one at a time."""
    jobs = list(jobs)
    if len(jobs) <= 1 or any(j.train_config.learning_rate == "auto" for j in jobs):
        return [recipe.run_job(j, progress) for j in jobs]
    started = time.perf_counter()
    resolve_device(jobs[0].train_config.device)
    with recipe._run_context(jobs[0].train_config):
        runs = _set_up(jobs)
        taken = len(runs)
        records = _train_and_test(runs, jobs[:taken], started, progress)
    return records + run_pack(jobs[taken:], progress)


def _train_and_test(runs: list[Run], jobs: list[FinetuneJob], started: float, progress):
    """The pack's records; one run at a time when they cannot share a pack or run out of
    memory together."""
    if len(runs) == 1 or pack_problem(runs) is not None:
        runs.clear()
        return [recipe.run_job(j, progress) for j in jobs]
    pack = Pack(runs)
    try:
        train_pack(pack, progress)
        evaluate_pack(pack)
    except torch.OutOfMemoryError:
        del pack
        runs.clear()
        return [recipe.run_job(j, progress) for j in jobs]
    finally:
        if progress is not None:
            progress.close()
    return [_finish(run, job, started) for run, job in zip(runs, jobs, strict=True)]


def memory_budget(run: Run) -> tuple[int, str]:
    """``(bytes, where they come from)`` a pack may take beyond what the process holds: the
    members' ``max_memory`` when set, else :func:`~ftscale.finetune.memory.default_budget` (the
    memory policy's share of the free RAM or GPU memory)."""
    if run.config.max_memory is not None:
        return run.config.max_memory - held_memory(run.device), "max_memory"
    budget, source = default_budget(run.device)
    return budget - held_memory(run.device), source


def footprint(run: Run) -> int:
    """Bytes one set-up member adds to a pack, by the memory policy's estimate
    (:class:`~ftscale.finetune.memory.Footprint`, measured on a probe as a run alone measures
    it): its copy of the model's tensors, gradients, optimizer state and best state of its
    trainable tensors, the activations of its largest batch and its share of the head's chunk.
    Packs do not checkpoint layers: a member that needs it trains alone."""
    estimate = recipe._footprint(run, decoder_layers(run.model))
    state = estimate.weights + estimate.gradients + estimate.optimizer + estimate.best_state
    return state + estimate.activations(0) + estimate.logits


def _set_up(jobs: list[FinetuneJob]) -> list[Run]:
    """Jobs set up as they would be alone, each on its own copy of its base model (each base
    loaded once), while the members' footprints fit the memory budget (at least one; the next
    member counted as large as the largest so far, so none is set up in vain); each member's
    record says the pack's plan."""
    loaded: dict[tuple, tuple] = {}
    runs: list[Run] = []
    sizes: list[int] = []
    budget, source = 0, ""
    for job in jobs:
        if runs and sum(sizes) + max(sizes) > budget:
            break
        run_inputs = recipe.job_inputs(job)
        where = (job.model, job.revision, job.gguf_file)
        if where not in loaded:
            loaded[where] = load_model(
                job.model, None, job.gguf_file, job.revision, copy_model=False
            )
        base, tokenizer, name = loaded[where]
        torch.manual_seed(run_inputs.config.seed)
        run = recipe.setup(copy.deepcopy(base), tokenizer, name, run_inputs)
        if not runs:
            budget, source = memory_budget(run)
        runs.append(run)
        sizes.append(footprint(run))
    for index, run in enumerate(runs):
        run.record.memory_plan = (
            f"memory plan: packed, member {index + 1} of {len(runs)}, no layers checkpointed; "
            f"estimated pack {sum(sizes) / MIB:.0f} MiB (this member {sizes[index] / MIB:.0f}) of "
            f"{budget / MIB:.0f} MiB budget beyond what the process holds ({source}); "
            f"{precision_name(run.autocast)}"
        )
    return runs


def _finish(run: Run, job: FinetuneJob, started: float) -> RunRecord:
    recipe.cleanup(run, started)
    record = run.record
    record.model = job.model + (f"/{job.gguf_file}" if job.gguf_file else "")
    record.revision = job.revision
    record.key = job.key
    record.job = job.to_dict()
    return record


__all__ = ["Pack", "evaluate_pack", "footprint", "memory_budget", "pack_problem", "run_pack"]
