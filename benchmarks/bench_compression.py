"""Compress the fine-tuned MiniLM sentiment classifier: accuracy at equal size, per method.

Run finetune_minilm.py first. For each fraction of the encoder's linear weights
kept, every method compresses all 36 encoder linear layers to the same ranks (so
the parameter counts are equal), and the test accuracy is measured without and
with a short fine-tuning (1 epoch over 1,000 tweets the model has not seen).
Methods: plain SVD, FWSVD (row-sum Fisher closed form), rank1 (our rank-one
Fisher closed form), als-cg (our default element-wise solver) and the TFWSVD
paper's recipe (Adam then SGD from FWSVD). "global" rows allocate ranks across
layers under the same total budget (compress_model(param_budget=...)).

Then the SVD-risk metric is validated: each layer alone is compressed by plain
SVD and the measured loss increase and accuracy drop are correlated (Spearman)
with the metric and with two simpler candidates.

    python benchmarks/bench_compression.py [--quick]

Writes results/compression.json, results/compression.md and results/compression.png.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from _common import ENCODER, RESULTS, evaluate, fine_tune, fisher, load_finetuned, write_json
from scipy.stats import spearmanr

from sklearn_wsvd.compress import compress_model
from sklearn_wsvd.metrics import svd_risk

METHODS = {
    "svd": dict(solver="svd"),
    "fwsvd": dict(solver="fwsvd"),
    "rank1": dict(solver="rank1"),
    "als-cg": dict(solver="als-cg"),
    "tfwsvd (paper)": dict(solver="adam", init="fwsvd"),
}


def compare_methods(model, tokenizer, data, F, ratios, methods, tune):
    rows = []
    for ratio in ratios:
        plans = [(name, dict(ratio=ratio, **kw)) for name, kw in methods.items()]
        plans += [
            (f"{name} global", dict(param_budget=ratio, solver=name))
            for name in ("rank1", "als-cg")
        ]
        for name, kw in plans:
            start = time.perf_counter()
            small, report = compress_model(
                model, importance=F, target_modules=ENCODER, progress=False, **kw
            )
            seconds = time.perf_counter() - start
            row = {
                "method": name,
                "ratio": ratio,
                "params_kept": report.params_after / report.params_before,
                "encoder_params_after": report.params_after,
                "compress_seconds": round(seconds, 1),
                "predicted_loss_increase": sum(r.error for r in report.layers),
                **{f"test_{k}": v for k, v in evaluate(small, tokenizer, *data["test"]).items()},
            }
            if tune:
                fine_tune(small, tokenizer, *data["tune"], epochs=1, lr=3e-5)
                tuned = evaluate(small, tokenizer, *data["test"])
                row.update({f"tuned_{k}": v for k, v in tuned.items()})
            print(row, flush=True)
            rows.append(row)
    return rows


def validate_metric(model, tokenizer, data, F, ratio, n_eval):
    """Compress one layer at a time with plain SVD; correlate the damage with each metric."""
    texts, labels = data["test"][0][:n_eval], data["test"][1][:n_eval]
    base = evaluate(model, tokenizer, texts, labels)
    modules = dict(model.named_modules())
    layers = []
    for name in F:
        W = modules[name].weight.detach().double().numpy()
        m, n = W.shape
        k = max(1, int(ratio * m * n / (m + n)))
        small, _ = compress_model(model, rank={name: k}, target_modules=[name], progress=False)
        hit = evaluate(small, tokenizer, texts, labels)
        Fn = F[name].double().numpy()
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        W_k = (U[:, :k] * S[:k]) @ Vt[:k]
        layers.append(
            {
                "layer": name,
                "rank": k,
                "loss_increase": hit["loss"] - base["loss"],
                "accuracy_drop": base["accuracy"] - hit["accuracy"],
                "svd_risk": svd_risk(W, Fn, k),
                "relative_frobenius_error": float(np.sum((W - W_k) ** 2) / np.sum(W**2)),
                "fisher_cv": float(Fn.std() / Fn.mean()),
            }
        )
        print(layers[-1], flush=True)
    correlations = {}
    for metric in ("svd_risk", "relative_frobenius_error", "fisher_cv"):
        x = [r[metric] for r in layers]
        correlations[metric] = {
            target: float(spearmanr(x, [r[target] for r in layers]).statistic)
            for target in ("loss_increase", "accuracy_drop")
        }
    return base, layers, correlations


def plot(rows, path, baseline):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in zip(
        axes,
        ("test_accuracy", "tuned_accuracy"),
        ("after compression", "after 1 epoch of tuning"),
        strict=True,
    ):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["method"] == method and key in r]
            if sel:
                ax.plot([r["params_kept"] for r in sel], [r[key] for r in sel], "o-", label=method)
        ax.axhline(baseline, color="grey", ls="--", lw=0.8, label="uncompressed")
        ax.set_xlabel("fraction of encoder linear weights kept")
        ax.set_title(title)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows, baseline, correlations):
    lines = [
        f"Uncompressed test accuracy: {baseline['accuracy']:.3f}.",
        "",
        "| kept | method | test accuracy | after tuning | compress (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        tuned = f"{r['tuned_accuracy']:.3f}" if "tuned_accuracy" in r else "-"
        lines.append(
            f"| {r['params_kept']:.1%} | {r['method']} | {r['test_accuracy']:.3f} | {tuned} | "
            f"{r['compress_seconds']} |"
        )
    lines += ["", "Spearman correlation of per-layer metrics with the damage of plain SVD:", ""]
    lines += ["| metric | loss increase | accuracy drop |", "|---|---|---|"]
    for metric, c in correlations.items():
        lines.append(f"| {metric} | {c['loss_increase']:.2f} | {c['accuracy_drop']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one ratio, no tuning, 8 layers")
    args = parser.parse_args()
    model, tokenizer, data = load_finetuned()
    F = fisher(model, tokenizer, data)
    baseline = evaluate(model, tokenizer, *data["test"])
    print("baseline", baseline, flush=True)
    ratios = (0.25,) if args.quick else (0.15, 0.25, 0.4)
    rows = compare_methods(model, tokenizer, data, F, ratios, METHODS, tune=not args.quick)
    F_metric = dict(list(F.items())[:8]) if args.quick else F
    base, layers, correlations = validate_metric(
        copy.deepcopy(model), tokenizer, data, F_metric, ratio=0.1, n_eval=500
    )
    name = "compression_quick" if args.quick else "compression"
    write_json(
        RESULTS / f"{name}.json",
        {
            "baseline": baseline,
            "rows": rows,
            "metric_validation": {"baseline": base, "layers": layers, "spearman": correlations},
        },
    )
    (RESULTS / f"{name}.md").write_text(markdown(rows, baseline, correlations))
    plot(rows, RESULTS / f"{name}.png", baseline["accuracy"])
    torch.set_num_threads(torch.get_num_threads())


if __name__ == "__main__":
    main()
