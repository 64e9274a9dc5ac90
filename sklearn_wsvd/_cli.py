"""The ``compress`` command: check every option and file, then load, calibrate, compress,
evaluate on held-out data, report and save. ``python -m sklearn_wsvd`` parses the command line."""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("auto", "causal-lm", "sequence-classification", "feature-extraction")
# Layers that are heads, not body: left alone unless --include-heads. The output
# embedding head (lm_head) is skipped by compress_model itself.
HEADS = (
    r"(.*\.)?(pooler|classifier|pre_classifier|score|classification_head|qa_outputs"
    r"|sequence_summary|logits_proj|predictions|lm_head)(\..*)?"
)
DTYPES = ("float32", "float16", "bfloat16")
REPORTS = ("text", "json", "csv")
REPORT_SUFFIXES = {".json": "json", ".csv": "csv", ".txt": "text"}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)
LOSS_KINDS = {"fisher", "output_gradients"}


class UsageError(Exception):
    """A mistake in the command line or its files: one line on stderr, exit status 2."""


# Validation: everything that can be checked before a model is loaded. --------------


@dataclass
class _Plan:
    path: Path
    config: dict
    task: str
    texts: list[str] = field(default_factory=list)
    labels: list[int] | None = None
    n_eval: int = 0
    exclude: str | None = None
    device: str = "cpu"
    sentence_transformer: bool = False
    report_file_format: str | None = None
    gguf_file: str | None = None  # a .gguf model: its name inside ``path``
    # the transformers class of a model loaded as saved (feature-extraction with a
    # head the other tasks do not know: token classification, say); None: the task's
    model_class: str | None = None

    def source(self) -> dict:
        """from_pretrained's arguments besides the path: local only, the GGUF file if any."""
        return {
            "local_files_only": True,
            **({"gguf_file": self.gguf_file} if self.gguf_file else {}),
        }


def _check(args) -> _Plan:
    path = args.model
    if not path.exists():
        raise UsageError(f"{path}: no such directory")
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _check_rest(args, _gguf_plan(args, path))
    if not path.is_dir():
        raise UsageError(
            f"{path} is not a directory (give a local Hugging Face model directory or a .gguf file)"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{config_file} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{config_file} is not a JSON object")
    plan = _Plan(path, config, _task(args.task, config, config_file))
    plan.model_class = _saved_class(plan, config_file)
    plan.sentence_transformer = plan.task == "feature-extraction" and _has_sentence_transformers(
        path
    )
    if plan.task == "feature-extraction" and (path / "modules.json").is_file():
        if not plan.sentence_transformer:
            warnings.warn(
                f"{path} is a sentence-transformers model, but that package is not installed: "
                "the output is saved as a bare transformer, without its pooling and "
                "normalisation (pip install sentence-transformers)",
                stacklevel=2,
            )
    if args.data is not None and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{path} has no tokenizer files: --data cannot be tokenized")
    return _check_rest(args, plan)


def _gguf_plan(args, path) -> _Plan:
    """A GGUF file (llama.cpp's format): transformers reads its config, tokenizer and weights
    (dequantised to --dtype) through the gguf package."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"{path}: reading a GGUF file needs the gguf package (pip install gguf)")
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(
            path.parent, gguf_file=path.name, local_files_only=True
        ).to_dict()
    except Exception as exc:  # transformers' own errors for a file it cannot read
        raise UsageError(f"{path}: transformers cannot read this GGUF file ({exc})") from None
    if not config.get("architectures"):  # GGUF files hold language models: a causal LM's head
        config["architectures"] = ["ForCausalLM"]
    return _Plan(path.parent, config, _task(args.task, config, path), gguf_file=path.name)


def _check_rest(args, plan) -> _Plan:
    """What does not depend on the model's format: data, method, layers, device, outputs."""
    if args.data is not None:
        plan.texts, plan.labels = _read_data(args, plan)
        n = len(plan.texts)
        # A classifier without labels has nothing to be evaluated on: calibrate on everything.
        evaluable = plan.task != "sequence-classification" or plan.labels is not None
        plan.n_eval = math.ceil(args.eval_fraction * n) if evaluable else 0
        if n - plan.n_eval < 1:
            raise UsageError(
                f"{args.data} has {n} text(s): none left to calibrate on after holding out "
                f"--eval-fraction {args.eval_fraction}"
            )
    _check_method(args, plan)
    plan.exclude = _exclusions(args)
    _check_targets(args, plan)
    plan.device = _device(args.device)
    _check_outputs(args, plan)
    return plan


def _task(requested, config, source) -> str:
    from transformers.models.auto import modeling_auto as auto

    from .compress.calibration import is_causal_lm_class

    def names(mapping):
        out = set()
        for value in mapping.values():
            out.update([value] if isinstance(value, str) else value)
        return out

    architectures = config.get("architectures") or []
    if not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
        raise UsageError(f"{source}: architectures must be a list of names, got {architectures!r}")
    causal = any(is_causal_lm_class(a) for a in architectures)
    classifier = any(
        a in names(auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
        or a.endswith("ForSequenceClassification")
        for a in architectures
    )
    if requested == "auto":
        task = "causal-lm" if causal else "sequence-classification" if classifier else None
        task = task or "feature-extraction"
    else:
        task = requested
        wanted = {"causal-lm": causal, "sequence-classification": classifier}.get(task, True)
        if not wanted:
            raise UsageError(
                f"--task {task}: {source} names the architectures {architectures}, without "
                f"a {task} head; loading one would add untrained weights"
            )
    mapping = {
        "causal-lm": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "sequence-classification": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "feature-extraction": auto.MODEL_MAPPING_NAMES,
    }[task]
    model_type = config.get("model_type")
    if model_type not in mapping:
        raise UsageError(
            f"{source}: transformers has no {task} model for model_type {model_type!r}"
        )
    return task


def _saved_class(plan, source) -> str | None:
    """The class named in config.json, where the task's auto class would load another one.

    A feature-extraction run loads the body (``AutoModel``) of a model that is
    only a body; a model saved with a head that no task here knows (token
    classification, question answering, a T5 encoder) is loaded as saved, so
    that its head is kept and no untrained weights are added.
    """
    import transformers
    from transformers.models.auto import modeling_auto as auto

    architectures = plan.config.get("architectures") or []
    if plan.task != "feature-extraction" or not architectures:
        return None
    name = architectures[0]
    if auto.MODEL_MAPPING_NAMES.get(plan.config.get("model_type")) == name:
        return None
    if not isinstance(getattr(transformers, name, None), type):
        raise UsageError(
            f"{source}: transformers has no class {name!r} (the architecture it names); "
            "a model of custom code cannot be loaded here"
        )
    return name


def _has_sentence_transformers(path) -> bool:
    import importlib.util

    return (path / "modules.json").is_file() and bool(
        importlib.util.find_spec("sentence_transformers")
    )


TABLES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")


def _read_data(args, plan):
    """The texts of --data and, for a classifier with a label column, their label ids."""
    path = args.data
    if not path.is_file():
        raise UsageError(f"--data {path}: no such file")
    want_labels = plan.task == "sequence-classification"
    suffix = path.suffix.lower()
    label_column = args.label_column or "label"  # named or not, a column "label" counts
    texts, raw, columns = [], [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            if suffix not in TABLES:
                texts = [line.strip() for line in f if line.strip()]
            else:
                columns, rows = _table(f, suffix, path)
                if args.text_column not in columns:
                    raise UsageError(
                        f"--data {path} has no column {args.text_column!r} (its columns: "
                        f"{', '.join(columns) or 'none'}); name one with --text-column"
                    )
                labelled = want_labels and label_column in columns
                for place, row in rows:
                    text = row.get(args.text_column)
                    if text is not None and not isinstance(text, str):
                        raise UsageError(
                            f"--data {path}, {place}: the text {args.text_column!r} is a "
                            f"{type(text).__name__}, not a string"
                        )
                    if not (text or "").strip():
                        continue
                    if not _encodable(text):  # a JSON escape can leave a surrogate unpaired
                        raise UsageError(
                            f"--data {path}, {place}: the text holds an unpaired surrogate "
                            "(an escape between \\ud800 and \\udfff): not valid Unicode"
                        )
                    texts.append(text.strip())
                    if labelled:  # JSON's true, 1 and null as written, like a CSV cell
                        label = row.get(label_column)
                        if not isinstance(label, str):
                            label = "" if label is None else json.dumps(label)
                        raw.append((place, label.strip()))
    except csv.Error as exc:
        raise UsageError(f"--data {path} is not a valid CSV ({exc})") from None
    except UnicodeDecodeError:
        raise UsageError(
            f"--data {path} is not UTF-8 text (byte {_first_bad_byte(path)}): give a .txt of "
            "lines, a .csv, a .tsv or JSON Lines"
        ) from None
    except OSError as exc:
        raise UsageError(f"--data {path}: {exc.strerror or exc}") from None
    if not texts:
        raise UsageError(f"--data {path} holds no text")
    if any("\x00" in text for text in texts):
        raise UsageError(f"--data {path} holds NUL characters: not text")
    if want_labels and columns and not raw and args.label_column is not None:
        raise UsageError(
            f"--data {path} has no column {args.label_column!r} (its columns: "
            f"{', '.join(columns)}); name the label column with --label-column, or leave it "
            "out to calibrate without labels"
        )
    return texts, (_label_ids(raw, plan.config, path) if raw else None)


def _table(f, suffix, path):
    """The columns of a table file and its rows, as (place, {column: value}) pairs.

    A ``.csv`` or ``.tsv`` with a header row (a TSV's fields are taken as they are:
    a quote inside one is text), or JSON: one object per line (JSON Lines, as
    ``datasets`` writes them) or, in a ``.json``, an array of objects or one object.
    """
    if suffix in (".csv", ".tsv"):
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",", quoting=quoting)
        return reader.fieldnames or [], ((f"line {reader.line_num}", row) for row in reader)
    content = f.read()
    rows = None
    if suffix == ".json":  # one document: an array of objects, or one object
        try:
            document = json.loads(content)
        except (ValueError, RecursionError) as exc:  # perhaps JSON Lines
            if content.lstrip().startswith("["):
                raise UsageError(f"--data {path} is not valid JSON ({exc})") from None
        else:
            records = document if isinstance(document, list) else [document]
            rows = [(f"record {i}", record) for i, record in enumerate(records, 1)]
    if rows is None:  # JSON Lines: only "\n" ends a line (a string may hold U+2028)
        rows = []
        for i, line in enumerate(content.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {i}", json.loads(line)))
            except (ValueError, RecursionError) as exc:
                raise UsageError(
                    f"--data {path}, line {i} is not valid JSON ({getattr(exc, 'msg', exc)}): "
                    "give one object per line (JSON Lines) or, in a .json, an array of objects"
                ) from None
    for place, row in rows:
        if not isinstance(row, dict):
            raise UsageError(
                f"--data {path}, {place}: expected an object of columns, got {type(row).__name__}"
            )
    return list(dict.fromkeys(key for _, row in rows for key in row)), rows


def _first_bad_byte(path) -> int:
    """Offset of the first byte of ``path`` that is not UTF-8 (a decoding error's own offset
    counts from the chunk being read)."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return -1


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _label_ids(raw, config, path) -> list[int]:
    """Label names (config.json's label2id) or ids in [0, num_labels), checked row by row."""
    n = len(config.get("id2label") or {}) or int(config.get("num_labels") or 2)
    if n == 1 or config.get("problem_type") in ("regression", "multi_label_classification"):
        raise UsageError(
            f"--data {path} has labels, but the model has one output or is not a single-label "
            "classifier (problem_type "
            f"{config.get('problem_type')!r}): its labels cannot calibrate it here; drop the "
            "label column to calibrate on the texts alone"
        )
    label2id = config.get("label2id") or {f"LABEL_{i}": i for i in range(n)}
    out = []
    for place, value in raw:
        if value in label2id:
            out.append(int(label2id[value]))
        elif value.lstrip("-").isdecimal() and 0 <= int(value) < n:
            out.append(int(value))
        else:
            names = ", ".join(map(repr, label2id))
            raise UsageError(
                f"--data {path}, {place}: label {value!r} is not one of the model's {n} "
                f"labels (ids 0 to {n - 1}, or the names in config.json's label2id: {names})"
            )
    return out


def _check_method(args, plan):
    from .compress import METHODS

    has_text = bool(plan.texts)
    has_loss = (plan.task == "causal-lm" and has_text) or plan.labels is not None
    needs = () if args.method == "auto" else METHODS[args.method].needs
    inputs_only = ", ".join(n for n, m in METHODS.items() if m.needs == ("inputs",))
    if LOSS_KINDS & set(needs) and not has_loss:
        if plan.task == "feature-extraction":
            why = "a feature-extraction model has no loss"
        elif not has_text:
            why = "give --data (text for a causal LM, a labelled CSV for a classifier)"
        else:
            why = f"--data {args.data} has no label column {args.label_column or 'label'!r}"
        raise UsageError(
            f"--method {args.method} needs the gradients of a loss: {why}; or use a method "
            f"that needs only inputs ({inputs_only}) or 'svd'"
        )
    if needs and not has_text:
        raise UsageError(f"--method {args.method} needs calibration data: give --data")
    if args.sequential:
        if not has_text:
            raise UsageError("--sequential needs calibration data: give --data")
        if args.method != "auto" and "inputs" not in needs:
            uses = ", ".join(n for n, m in METHODS.items() if "inputs" in m.needs)
            raise UsageError(
                f"--sequential refits layers to their inputs; --method {args.method} does not "
                f"use them (use {uses})"
            )
    if args.statistics_memory is not None:
        if args.sequential:
            raise UsageError("--statistics-memory does not combine with --sequential")
        if not has_text:
            raise UsageError("--statistics-memory bounds calibration statistics: give --data")
    if args.solver != "auto" and args.method != "tfwsvd":
        raise UsageError(f"--solver applies to --method tfwsvd only, not {args.method}")


def _check_targets(args, plan):
    """--target and --exclude must match layers: checked on the model's skeleton (meta device)."""
    import torch
    import transformers

    from .compress import find_targets

    try:
        config = transformers.AutoConfig.from_pretrained(plan.path, **plan.source())
        with torch.device("meta"):
            cls = _model_class(plan)
            skeleton = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    except Exception as exc:  # transformers' own errors for a config it cannot build
        raise UsageError(f"{plan.path}: transformers cannot build its model ({exc})") from None
    if (
        args.data is not None
        and "decoder_input_ids" in inspect.signature(skeleton.forward).parameters
    ):
        raise UsageError(
            f"{plan.path}: {type(skeleton).__name__} is an encoder-decoder model, whose decoder "
            "needs its own inputs: the command line cannot calibrate it on --data (compress it "
            "without --data, or in Python with compress_model and batches that hold labels)"
        )
    try:
        targets = find_targets(skeleton, args.target, plan.exclude)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from .compress._format import QUANT_METHOD

    saved = plan.config.get("quantization_config") or {}
    if saved.get("quant_method") == QUANT_METHOD and set(targets) <= set(saved.get("layers", {})):
        raise UsageError(
            f"{plan.path} is already compressed: every target layer is low-rank (name others "
            "with --target or --include-heads, or compress the original model)"
        )


def _model_class(plan):
    import transformers

    if plan.model_class is not None:
        return getattr(transformers, plan.model_class)
    return {
        "causal-lm": transformers.AutoModelForCausalLM,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "feature-extraction": transformers.AutoModel,
    }[plan.task]


def _exclusions(args) -> str | None:
    parts = [] if args.include_heads else [HEADS]
    if args.exclude:
        parts.append(args.exclude)
    return "|".join(f"(?:{p})" for p in parts) or None


def _device(name) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"argument --device: {name!r} is not a torch device") from None
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and not (backend is not None and backend.is_available()):
        raise UsageError(f"argument --device: {device.type} is not available on this machine")
    return str(device)


def _check_outputs(args, plan):
    out = args.out
    if out is not None:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a directory")
        if out.exists() and out.resolve() == plan.path.resolve():
            raise UsageError("--out is the model directory itself: choose another")
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise UsageError(f"--out {out} is not empty (pass --overwrite to write into it)")
        from .compress.io import stale_weights

        stale = stale_weights(out)
        if stale and not plan.sentence_transformer:
            raise UsageError(
                f"--out {out} holds {stale}, which transformers would load instead of the "
                "compressed weights: remove them, or choose an empty directory"
            )
    if args.report_file is not None:
        fmt = REPORT_SUFFIXES.get(args.report_file.suffix.lower())
        if fmt is None:
            raise UsageError(f"--report-file {args.report_file} must end in .json, .csv or .txt")
        if not args.report_file.parent.is_dir():
            raise UsageError(f"--report-file: no directory {args.report_file.parent}")
        report = args.report_file.resolve()
        saved = args.out is not None and report.parent == args.out.resolve()
        if (
            (args.data is not None and report == args.data.resolve())
            or report.is_relative_to(plan.path.resolve())
            or (saved and (plan.path / report.name).exists())  # the save writes its own
        ):
            raise UsageError(
                f"--report-file {args.report_file} is --data, in the model's directory or a "
                "file the save writes: write it elsewhere"
            )
        plan.report_file_format = fmt


# Running. ------------------------------------------------------------------------------


def compress(args) -> int:
    """Compress a local Hugging Face model directory: calibrate, compress, evaluate, save."""
    plan = _check(args)
    say = _messages(args.report)
    start = time.perf_counter()
    model, tokenizer, saved = _load(args, plan)
    say(
        f"{plan.path}: {type(model).__name__} ({plan.task}), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, on {plan.device}"
    )
    calibration, held_out, (cut, max_length) = _batches(args, plan, model, tokenizer)
    if calibration:
        n_calibration = len(plan.texts) - plan.n_eval
        say(
            f"calibrating on {min(n_calibration, args.calibration_samples)} texts of {args.data}"
            + (f", {plan.n_eval} held out for evaluation" if plan.n_eval else "")
        )
    if cut:
        say(
            f"{cut} of those texts are longer than {max_length} tokens and were cut to it "
            "(--max-length, at most the model's number of positions)"
        )
    evaluate = _evaluator(plan.task, plan.labels is not None)
    before = evaluate(model, held_out) if held_out and evaluate else None

    from .compress import compress_model, save_compressed

    model, report = compress_model(
        model,
        rank=args.rank,
        ratio=args.ratio,
        param_budget=args.param_budget,
        method=args.method,
        batches=calibration,
        sequential=args.sequential,
        target_modules=args.target,
        exclude_modules=plan.exclude,
        min_saving=args.min_saving,
        solver=args.solver,
        inplace=True,
        n_jobs=args.n_jobs,
        statistics_memory=args.statistics_memory or "auto",
        progress=True,
    )
    evaluation = None
    if before is not None:
        evaluation = _compare(plan.task, before, evaluate(model, held_out), plan.n_eval)
    texts = {fmt: _format_report(report, evaluation, plan.task, fmt) for fmt in REPORTS}
    print(texts[args.report], end="")
    if plan.report_file_format:
        args.report_file.write_text(texts[plan.report_file_format])
    if evaluation:
        say(evaluation["summary"])
    if args.out is not None:
        save_compressed(
            saved, args.out, report=report, base_model=str(args.model), method=report.method
        )
        if tokenizer is not None and not plan.sentence_transformer:
            tokenizer.save_pretrained(args.out)
        how = "SentenceTransformer(OUT)" if plan.sentence_transformer else "from_pretrained(OUT)"
        say(f"saved to {args.out}; load it with {how} after `import sklearn_wsvd.compress`")
    say(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _messages(report_format):
    """Messages go to stdout beside a text report, to stderr beside a JSON or CSV one."""
    stream = sys.stdout if report_format == "text" else sys.stderr

    def say(message):
        print(message, file=stream, flush=True)

    return say


def _load(args, plan):
    """The model (on its device, in eval mode), its tokenizer, and what save_compressed saves."""
    import torch
    import transformers
    from packaging.version import Version

    dtype = getattr(torch, args.dtype)
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    if plan.sentence_transformer:
        from sentence_transformers import SentenceTransformer

        saved = SentenceTransformer(
            str(plan.path), device=plan.device, local_files_only=True, model_kwargs={key: dtype}
        )
        model = next(m.auto_model for m in saved if hasattr(m, "auto_model"))
        tokenizer = saved.tokenizer
    else:
        model = _model_class(plan).from_pretrained(plan.path, **plan.source(), **{key: dtype})
        saved = model = model.to(plan.device)
        tokenizer = None
        if plan.gguf_file or any((plan.path / name).is_file() for name in TOKENIZER_FILES):
            tokenizer = transformers.AutoTokenizer.from_pretrained(plan.path, **plan.source())
    model.eval()
    if plan.texts and tokenizer is not None and tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(f"{plan.path}: its tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style: padding is masked anyway
    return model, tokenizer, saved


def _batches(args, plan, model, tokenizer):
    """Calibration and held-out batches (lists of dicts on the model's device), or Nones.

    Also how many of their texts were cut, and to how many tokens.
    """
    if not plan.texts:
        return None, None, (0, None)
    import numpy as np
    import torch

    order = np.random.default_rng(args.seed).permutation(len(plan.texts))
    held, rest = order[: plan.n_eval], order[plan.n_eval :][: args.calibration_samples]
    accepted = {
        name
        for name, param in inspect.signature(model.forward).parameters.items()
        if param.kind is not inspect.Parameter.VAR_KEYWORD
    }

    # Longer texts than the model has positions for would fail inside its embeddings.
    max_length = min(args.max_length, _position_limit(model, tokenizer))
    cut = 0

    def encode(indices):
        nonlocal cut
        out = []
        for i in range(0, len(indices), args.batch_size):
            chunk = indices[i : i + args.batch_size]
            texts = [plan.texts[j] for j in chunk]
            full = tokenizer(texts, verbose=False)["input_ids"]
            cut += sum(len(ids) > max_length for ids in full)
            enc = tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            batch = {k: v.to(plan.device) for k, v in enc.items() if k in accepted}
            if plan.labels is not None:  # a causal LM's text is its own labels
                batch["labels"] = torch.tensor([plan.labels[j] for j in chunk], device=plan.device)
            out.append(batch)
        return out

    return encode(rest), encode(held), (cut, max_length)


def _position_limit(model, tokenizer) -> float:
    """How many tokens a text may have: the model's positions (inf where unbounded).

    From the config (``max_position_embeddings``, GPT-2's ``n_positions``), the
    tokenizer's ``model_max_length`` and learned position embeddings with a
    padding index (RoBERTa's positions start after it, two fewer than its table).
    """
    from torch import nn

    limits = [
        getattr(model.config, "max_position_embeddings", None),
        getattr(model.config, "n_positions", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, nn.Embedding):
            if module.padding_idx is not None:
                limits.append(module.num_embeddings - module.padding_idx - 1)
    return min((n for n in limits if isinstance(n, int) and n > 0), default=math.inf)


def _evaluator(task, labelled):
    from .compress import evaluation

    if task == "causal-lm":
        return lambda model, batches: evaluation.perplexity(model, batches, progress=True)
    if task == "sequence-classification":
        if not labelled:
            return None
        return lambda model, batches: evaluation.accuracy(model, batches, progress=True)
    return lambda model, batches: evaluation.embeddings(model, batches, progress=True)


def _compare(task, before, after, n) -> dict:
    if task == "causal-lm":
        return {
            "perplexity_before": before,
            "perplexity_after": after,
            "summary": f"perplexity on {n} held-out texts: {before:.3f} -> {after:.3f}",
        }
    if task == "sequence-classification":
        return {
            "accuracy_before": before[0],
            "accuracy_after": after[0],
            "loss_before": before[1],
            "loss_after": after[1],
            "summary": f"accuracy on {n} held-out texts: {before[0]:.3f} -> {after[0]:.3f} "
            f"(loss {before[1]:.4f} -> {after[1]:.4f})",
        }
    import torch

    cosine = float(torch.nn.functional.cosine_similarity(before, after, dim=1).mean())
    return {
        "embedding_cosine_similarity": cosine,
        "summary": f"embeddings of {n} held-out texts: mean cosine similarity to the "
        f"original's {cosine:.4f}",
    }


def _json_safe(value):
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _format_report(report, evaluation, task, fmt) -> str:
    if fmt == "text":
        return f"{report}\n"
    if fmt == "json":
        payload = {**report.to_dict(), "task": task, "evaluation": evaluation}
        return json.dumps(_json_safe(payload), indent=2) + "\n"
    rows = report.to_dict()["layers"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["name"])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "shape": "x".join(map(str, row["shape"]))})
    return buffer.getvalue()
