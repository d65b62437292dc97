"""Hostile input to ``ftscale finetune``: one line, exit 2, nothing written, before any training.

Every case but the model-loading ones fails before a model is loaded (the model path is never
touched), so the table runs in a few seconds.
"""

from __future__ import annotations

import json
import os

import pytest

GOOD = "".join(
    json.dumps({"source": f"a b {c}", "target": f"{c} b a"}) + "\n" for c in "cdefghij"
)
EMPTY_SOURCE = GOOD + json.dumps({"source": "", "target": "x"}) + "\n"
BLANK_TARGET = json.dumps({"source": "a", "target": "   "}) + "\n" + GOOD


def base(*extra: str, method: str = "lora", train: str = "{train}") -> list[str]:
    """A finetune command line whose inputs are fine; ``extra`` adds the hostile part."""
    return [
        "finetune",
        "--model",
        "{model}",
        "--method",
        method,
        "--train",
        train,
        "--dev",
        "{dev}",
        "--test",
        "{dev}",
        *extra,
    ]


CASES = [
    # method registry and sizes
    ("unknown method", base(method="nosuch"), r"unknown finetuning method 'nosuch'"),
    ("rank with fmt", base("--rank", "4", method="fmt"), r"--rank applies to methods with a rank"),
    ("prompt length with lora", base("--prompt-length", "5"), r"--prompt-length applies"),
    ("rank zero", base("--rank", "0"), r"'--rank'"),
    ("prompt length zero", base("--prompt-length", "0", method="prompt"), r"'--prompt-length'"),
    ("unknown method option", base("-o", "ranke=3"), r"unknown option 'ranke'"),
    ("option without value", base("-o", "alpha"), r"--option 'alpha': expected KEY=VALUE"),
    ("negative lora alpha", base("-o", "alpha=-1"), r"alpha must be a positive"),
    ("fmt with options", base("-o", "r=4", method="fmt"), r"takes no options"),
    ("prefix tuning needs tokens", base(method="prefix_tuning"), r"num_virtual_tokens"),
    # numbers: range and finiteness, the option named
    ("batch size zero", base("--batch-size", "0"), r"'--batch-size'"),
    ("batch size negative", base("--batch-size", "-3"), r"'--batch-size'"),
    ("examples zero", base("--examples", "0"), r"'--examples'"),
    ("examples above data", base("--examples", "500"), r"examples 500 is larger"),
    ("max steps zero", base("--max-steps", "0"), r"'--max-steps'"),
    ("epochs zero", base("--epochs", "0"), r"--epochs"),
    ("epochs negative", base("--epochs", "-2"), r"--epochs"),
    ("epochs nan", base("--epochs", "nan"), r"--epochs"),
    ("epochs inf", base("--epochs", "inf"), r"--epochs"),
    ("lr zero", base("--lr", "0"), r"--lr: must be a positive number or 'auto' \(got '0'\)"),
    ("lr negative", base("--lr", "-1e-3"), r"--lr"),
    ("lr nan", base("--lr", "nan"), r"--lr"),
    ("lr text", base("--lr", "fast"), r"--lr: .*\(got 'fast'\)"),
    ("patience negative", base("--patience", "-1"), r"'--patience'"),
    ("gen examples negative", base("--gen-examples", "-1"), r"'--gen-examples'"),
    ("max new tokens zero", base("--max-new-tokens", "0"), r"'--max-new-tokens'"),
    ("threads zero", base("--threads", "0"), r"'--threads'"),
    ("eval every zero", base("--eval-every", "0"), r"'--eval-every'"),
    ("dev examples zero", base("--dev-examples", "0"), r"'--dev-examples'"),
    ("source cap zero", base("--max-source-tokens", "0"), r"'--max-source-tokens'"),
    ("target cap negative", base("--max-target-tokens", "-5"), r"'--max-target-tokens'"),
    ("seed negative", base("--seed", "-1"), r"'--seed'"),
    ("subset seed negative", base("--subset-seed", "-1"), r"'--subset-seed'"),
    ("shots negative", base("--shots", "-1"), r"'--shots'"),
    ("eval examples zero", base("--eval-examples", "0"), r"'--eval-examples'"),
    # settings generated from the schema: every range is checked before a model loads
    (
        "weight decay negative",
        base("--weight-decay", "-0.1"),
        r"--weight-decay: .*greater than or equal to 0 \(got -0.1\)",
    ),
    ("weight decay inf", base("--weight-decay", "inf"), r"--weight-decay: .*finite"),
    ("min steps zero", base("--min-steps", "0"), r"'--min-steps'"),
    ("warmup fraction one", base("--warmup-fraction", "1"), r"--warmup-fraction: .*less than 1"),
    ("final lr fraction above one", base("--final-lr-fraction", "1.5"), r"--final-lr-fraction"),
    ("grad norm zero", base("--max-grad-norm", "0"), r"--max-grad-norm: .*greater than 0"),
    ("evals zero", base("--evals", "0"), r"'--evals'"),
    ("gen batch zero", base("--gen-batch-size", "0"), r"'--gen-batch-size'"),
    ("eval tokens zero", base("--eval-tokens-per-batch", "0"), r"'--eval-tokens-per-batch'"),
    ("bf16 with a value", base("--bf16", "yes"), r"--bf16|unexpected extra argument"),
    ("unknown schedule", base("--schedule", "linear"), r"--schedule: .*'cosine' or 'wsd'"),
    ("decay fraction zero", base("--decay-fraction", "0"), r"--decay-fraction: .*greater than 0"),
    ("decay fraction above one", base("--decay-fraction", "2"), r"--decay-fraction"),
    ("dev spacing zero", base("--dev-every-examples", "0"), r"'--dev-every-examples'"),
    ("min improvement one", base("--min-improvement", "1"), r"--min-improvement: .*less than 1"),
    ("min improvement negative", base("--min-improvement", "-0.1"), r"--min-improvement"),
    ("checkpointing unknown spelling", base("--checkpoint"), r"No such option"),
    ("compile with a value", base("--compile", "yes"), r"--compile|unexpected extra argument"),
    ("compile unknown spelling", base("--compiled"), r"No such option"),
    # memory budget (a budget too small for any plan: tests/finetune/test_memory.py, it needs a
    # model that loads)
    ("max memory text", base("--max-memory", "banana"), r"--max-memory: .*\(got 'banana'\)"),
    ("max memory zero", base("--max-memory", "0"), r"--max-memory: must be a positive memory"),
    ("max memory negative", base("--max-memory", "-5GB"), r"--max-memory: .*\(got '-5GB'\)"),
    ("max memory unknown unit", base("--max-memory", "2XB"), r"--max-memory: .*\(got '2XB'\)"),
    ("max memory nan", base("--max-memory", "nan"), r"--max-memory: .*\(got 'nan'\)"),
    ("max memory under a byte", base("--max-memory", "0.5"), r"--max-memory: .*\(got '0.5'\)"),
    ("max memory empty", base("--max-memory", ""), r"--max-memory: .*\(got ''\)"),
    ("max memory no value", base("--max-memory"), r"--max-memory"),
    # task and scoring settings
    ("malformed template", base("--template", "{src ="), r"template '\{src =': not a format"),
    ("template without src", base("--template", "translate:"), r"must contain \{src\}"),
    ("template positional field", base("--template", "{{src}} {{}}"), r"is not a field name"),
    ("template field unset", base("--template", "{{src}} {{lang}}"), r"no value for field"),
    ("field without value", base("--field", "lang"), r"--field 'lang': expected KEY=VALUE"),
    ("bogus bleu tokenizer", base("--bleu-tokenize", "bogus"), r"bleu_tokenize 'bogus' unknown"),
    ("unknown optimizer", base("--optimizer", "sgd"), r"--optimizer: .*'adamw' or 'adafactor'"),
    # data
    ("empty source in training pairs", base(train="{empty_source}"), r"empty pair.*row 9"),
    ("blank target in training pairs", base(train="{blank_target}"), r"empty pair.*row 1\b"),
    ("missing training file", base(train="nowhere.jsonl"), r"nowhere.jsonl"),
    # eval sets
    ("eval without name", base("--eval", "builtin:fr-de"), r"expected NAME=SOURCE"),
    ("eval missing file", base("--eval", "x=nowhere.jsonl"), r"nowhere.jsonl"),
    ("eval unknown task", base("--eval", "x=builtin:nosuch"), r"eval set 'x'"),
    ("eval names repeat", base("--eval", "x={dev}", "--eval", "x={dev}"), r"names must differ"),
    ("shots without eval", base("--shots", "2"), r"--shots applies to --eval"),
    ("more shots than pairs", base("--eval", "x={dev}", "--shots", "8"), r"8 shots need more"),
    # devices
    ("device not torch", base("--device", "toaster"), r"device 'toaster'"),
    # output locations
    ("output is a folder", base("--output", "{outdir}"), r"--output .*is a folder"),
    ("output under a file", base("--output", "{dev}/records.jsonl"), r"is not a folder"),
    # saved specs
    ("job file missing", ["finetune", "--job", "nojob.json"], r"no such job file"),
    ("job file not JSON", ["finetune", "--job", "{notes}"], r"not JSON"),
    ("missing required option", ["finetune", "--model", "{model}"], r"missing option --method"),
]


@pytest.fixture
def prepared(hostile):
    hostile.file("train", GOOD, "train.jsonl")
    hostile.file("dev", GOOD, "dev.jsonl")
    hostile.file("empty_source", EMPTY_SOURCE, "empty_source.jsonl")
    hostile.file("blank_target", BLANK_TARGET, "blank_target.jsonl")
    hostile.file("notes", "just some notes\n", "notes.txt")
    hostile.folder("outdir")
    hostile.folder("model")  # never loaded: every case fails before
    return hostile


@pytest.mark.parametrize(("name", "args", "match"), CASES, ids=[c[0] for c in CASES])
def test_finetune_hostile(prepared, name, args, match):
    prepared(args, match=match)


def test_cuda_on_a_cpu_only_torch(prepared):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    prepared(base("--device", "cuda"), match=r"device 'cuda': this torch sees no CUDA GPU")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_output_in_a_read_only_folder(prepared):
    folder = prepared.folder("locked")
    folder.chmod(0o500)
    try:
        prepared(base("--output", "{locked}/records.jsonl"), match=r"not writable")
    finally:
        folder.chmod(0o700)


MODEL_CASES = [
    ("text file as model", "{notes}", r"notes.txt: a file that is not a .gguf model"),
    ("missing gguf", "nowhere.gguf", r"nowhere.gguf: no such GGUF file"),
    ("gguf that is not gguf", "{fake_gguf}", r"fake.gguf: "),
    ("folder without config", "{model}", r"not a model directory"),
    ("missing model folder", "./nowhere", r"no such model directory"),
]


@pytest.mark.parametrize(("name", "model", "match"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_finetune_hostile_models(prepared, name, model, match):
    pytest.importorskip("gguf")
    prepared.file("fake_gguf", "not a gguf file\n", "fake.gguf")
    args = base()
    args[args.index("{model}")] = model
    prepared(args, match=match)
