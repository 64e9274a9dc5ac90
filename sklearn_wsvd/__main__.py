"""Command line: ``python -m sklearn_wsvd {demo,compress}``."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path


def demo(args) -> int:
    """Run the bundled end-to-end example (a weighted fit, then a model compression)."""
    from ._demo import main

    main(args.rank)
    return 0


def _read_labelled_csv(path, text_column, label_column, label2id):
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if not rows or text_column not in rows[0] or label_column not in rows[0]:
        raise SystemExit(f"{path} needs the columns {text_column!r} and {label_column!r}.")
    texts = [r[text_column] for r in rows]
    raw = [r[label_column] for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        return texts, [int(v) for v in raw]
    missing = sorted(set(raw) - set(label2id))
    if missing:
        raise SystemExit(f"labels {missing} are not in the model's label2id {label2id}.")
    return texts, [label2id[v] for v in raw]


def compress(args) -> int:
    """Compress a Hugging Face model directory and save it with save_compressed."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from .compress import compress_model, fisher_importance, save_compressed

    sizes = {"rank": args.rank, "ratio": args.ratio, "param_budget": args.param_budget}
    if sum(v is not None for v in sizes.values()) != 1:
        raise SystemExit("Give exactly one of --rank, --ratio or --param-budget.")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    importance = None
    if args.data:
        model = AutoModelForSequenceClassification.from_pretrained(args.model)
        texts, labels = _read_labelled_csv(
            args.data, args.text_column, args.label_column, model.config.label2id
        )
        texts, labels = texts[: args.fisher_samples], torch.tensor(labels[: args.fisher_samples])

        def batches():
            for i in range(0, len(texts), 16):
                enc = tokenizer(
                    texts[i : i + 16],
                    padding=True,
                    truncation=True,
                    max_length=128,
                    return_tensors="pt",
                )
                yield {**enc, "labels": labels[i : i + 16]}

        start = time.perf_counter()
        importance = fisher_importance(
            model,
            batches(),
            target_modules=args.target,
            exclude_modules=args.exclude,
            per_sample=args.per_sample,
            progress=True,
        )
        print(f"Fisher importance of {len(texts)} samples: {time.perf_counter() - start:.1f} s")
    else:
        model = AutoModel.from_pretrained(args.model)
    start = time.perf_counter()
    budget = args.param_budget
    if budget is not None:
        budget = float(budget) if "." in budget else int(budget)
    model, report = compress_model(
        model,
        rank=args.rank,
        ratio=args.ratio,
        param_budget=budget,
        importance=importance,
        solver=args.solver,
        target_modules=args.target,
        exclude_modules=args.exclude,
        inplace=True,
        n_jobs=args.n_jobs,
    )
    print(report)
    print(f"compressed in {time.perf_counter() - start:.1f} s")
    if args.out:
        save_compressed(model, args.out)
        tokenizer.save_pretrained(args.out)
        print(f"saved to {args.out}; reload with sklearn_wsvd.compress.load_compressed")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sklearn_wsvd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help=demo.__doc__, description=demo.__doc__)
    p.add_argument("--rank", type=int, default=8, help="rank of the matrix example")
    p.set_defaults(func=demo)

    p = sub.add_parser("compress", help=compress.__doc__, description=compress.__doc__)
    p.add_argument("model", type=Path, help="a local Hugging Face model directory")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank", type=int, help="the same rank for every layer")
    size.add_argument("--ratio", type=float, help="fraction of each layer's weights to keep")
    size.add_argument(
        "--param-budget", help="weights to keep over all layers: a count, or a fraction like 0.4"
    )
    p.add_argument("--data", type=Path, help="labelled CSV for Fisher importance")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--fisher-samples", type=int, default=256)
    p.add_argument("--per-sample", action="store_true", help="per-sample squared gradients")
    p.add_argument("--solver", default="auto")
    p.add_argument("--target", help="regex of the layer names to compress")
    p.add_argument("--exclude", help="regex of the layer names to leave alone")
    p.add_argument("--n-jobs", type=int, default=None)
    p.add_argument("--out", type=Path, help="directory to save the compressed model to")
    p.set_defaults(func=compress)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
