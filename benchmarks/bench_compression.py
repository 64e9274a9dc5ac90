"""Compress fine-tuned MiniLM classifiers: accuracy at equal size, per method, on two tasks.

Run finetune_minilm.py --task <task> first (it caches the model and one calibration
pass over 256 training texts: input second moments, output-gradient moments and
the per-sample diagonal Fisher). For each fraction of the encoder's linear
weights kept, every method compresses all 36 encoder linear layers; "uniform"
rows give every layer the same fraction (so the parameter counts are equal),
"global" rows spread the same total budget across layers by the K-FAC loss
estimate (compress_model(param_budget=...)), "sequential" rows fit block by block
to the inputs of the already-compressed blocks. Test accuracy and loss are
measured without and with a short fine-tuning (1 epoch over texts the model has
not seen).

Then the SVD-risk metric is validated: each layer alone is compressed by plain
SVD and the measured loss increase and accuracy drop are correlated (Spearman)
with the old (diagonal Fisher) and the new (K-FAC) metric and simpler candidates.

    python benchmarks/bench_compression.py --task tweets [--no-tune] [--quick]
    python benchmarks/bench_compression.py --task tweets --methods svd kfac  # a subset
    python benchmarks/bench_compression.py --task tweets --merge a.json b.json

Writes results/compression-<task>.{json,md,png} (a subset or --quick:
compression-<task>-quick.*; --merge combines runs into compression-<task>.*).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
from _common import (
    ENCODER,
    RENAMED_CONFIGS,
    RESULTS,
    TASKS,
    evaluate,
    fine_tune,
    load_finetuned,
    page_figure,
    save,
    statistics,
    write_json,
)
from scipy.stats import spearmanr

from sklearn_wsvd.compress import compress_model
from sklearn_wsvd.metrics import output_error, svd_risk, truncated

# name: compress_model arguments ("allocation": uniform ratio or global budget)
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
    "kfac global sequential, G shrunk 1": dict(
        allocation="global", sequential=True, output_damping=1.0
    ),
}


def calibration_batches(tokenizer, data, task, n=256, batch_size=32):
    from _common import batches

    texts, labels = data["train"]
    return list(
        batches(tokenizer, texts[:n], labels[:n], batch_size, max_len=TASKS[task]["max_len"])
    )


def compare(model, tokenizer, data, stats, task, ratios, configs, tune):
    max_len = TASKS[task]["max_len"]
    calib = calibration_batches(tokenizer, data, task)
    rows = []
    for ratio in ratios:
        for name, cfg in configs.items():
            cfg = dict(cfg)
            size = (
                {"param_budget": ratio}
                if cfg.pop("allocation", "uniform") == "global"
                else {"ratio": ratio}
            )
            if cfg.get("sequential"):
                cfg["batches"] = calib
            start = time.perf_counter()
            small, report = compress_model(
                model,
                statistics=stats,
                target_modules=ENCODER,
                progress=False,
                **size,
                **cfg,
            )
            seconds = time.perf_counter() - start
            layers = [r for r in report.layers if r.rank is not None]
            row = {
                "method": name,
                "ratio": ratio,
                "params_kept": report.params_after / report.params_before,
                "encoder_params_after": report.params_after,
                "model_params_after": report.model_params_after,
                "compress_seconds": round(seconds, 2),
                "mean_output_error": float(np.mean([r.output_error for r in layers])),
                "predicted_loss_increase": sum(r.loss_estimate or 0.0 for r in layers),
                **{
                    f"test_{k}": v
                    for k, v in evaluate(small, tokenizer, *data["test"], max_len=max_len).items()
                },
            }
            if tune:
                fine_tune(small, tokenizer, *data["tune"], epochs=1, lr=3e-5, max_len=max_len)
                tuned = evaluate(small, tokenizer, *data["test"], max_len=max_len)
                row.update({f"tuned_{k}": v for k, v in tuned.items()})
            print(row, flush=True)
            rows.append(row)
    return rows


def timings(model, tokenizer, data, stats, task, configs, ratio=0.25, repeats=3):
    """Warm, repeated wall times: calibration passes and whole-model compression (medians)."""
    from sklearn_wsvd.compress import collect_statistics

    calib = calibration_batches(tokenizer, data, task)
    passes = {
        "inputs (svd-llm, asvd)": dict(collect=("inputs",)),
        "inputs + output gradients (kfac)": dict(collect=("inputs", "output_gradients")),
        "per-sample Fisher (fwsvd, tfwsvd)": dict(collect=("fisher",), per_sample=True),
    }
    out = {"calibration": {}, "compression": {}}
    for name, kw in passes.items():
        collect_statistics(model, calib[:1], target_modules=ENCODER, **kw)  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            collect_statistics(model, calib, target_modules=ENCODER, **kw)
            seconds.append(time.perf_counter() - start)
        out["calibration"][name] = {"median": float(np.median(seconds)), "runs": seconds}
        print(name, out["calibration"][name], flush=True)
    for name, cfg in configs.items():
        cfg = dict(cfg)
        size = (
            {"param_budget": ratio}
            if cfg.pop("allocation", "uniform") == "global"
            else {"ratio": ratio}
        )
        if cfg.get("sequential"):
            cfg["batches"] = calib
        seconds = []
        for _ in range(repeats + 1):  # the first run warms up
            start = time.perf_counter()
            compress_model(
                model, statistics=stats, target_modules=ENCODER, progress=False, **size, **cfg
            )
            seconds.append(time.perf_counter() - start)
        out["compression"][name] = {"median": float(np.median(seconds[1:])), "runs": seconds[1:]}
        print(name, out["compression"][name], flush=True)
    return out


def validate_metric(model, tokenizer, data, stats, task, ratio, n_eval):
    """Compress one layer at a time with plain SVD; correlate the damage with each metric."""
    max_len = TASKS[task]["max_len"]
    texts, labels = data["test"][0][:n_eval], data["test"][1][:n_eval]
    base = evaluate(model, tokenizer, texts, labels, max_len=max_len)
    modules = dict(model.named_modules())
    layers = []
    for name, st in stats.items():
        W = modules[name].weight.detach().double()
        m, n = W.shape
        k = max(1, int(ratio * m * n / (m + n)))
        small, _ = compress_model(
            model, rank={name: k}, method="svd", target_modules=[name], progress=False
        )
        hit = evaluate(small, tokenizer, texts, labels, max_len=max_len)
        C, G, F = st.input_second_moment, st.output_gradient_moment, st.fisher
        W_k = truncated(W, k)
        layers.append(
            {
                "layer": name,
                "rank": k,
                "loss_increase": hit["loss"] - base["loss"],
                "accuracy_drop": base["accuracy"] - hit["accuracy"],
                "svd_risk_kfac": svd_risk(W, rank=k, input_moment=C, output_gradient_moment=G),
                "svd_risk_fisher": svd_risk(W, F, k),
                "output_error": output_error(W, W_k, C),
                "relative_frobenius_error": float((W - W_k).norm() / W.norm()),
                "fisher_cv": float(F.std() / F.mean()),
            }
        )
        print(layers[-1], flush=True)
    correlations = {}
    for metric in (
        "svd_risk_kfac",
        "svd_risk_fisher",
        "output_error",
        "relative_frobenius_error",
        "fisher_cv",
    ):
        x = [r[metric] for r in layers]
        correlations[metric] = {
            target: float(spearmanr(x, [r[target] for r in layers]).statistic)
            for target in ("loss_increase", "accuracy_drop")
        }
    return base, layers, correlations


# Colour by weighting (what the method models), line style by how ranks are chosen and fitted.
COLOURS = {
    "svd": "tab:gray",
    "fwsvd": "tab:orange",
    "fisher-rank1": "tab:brown",
    "tfwsvd": "tab:pink",
    "asvd": "tab:purple",
    "svd-llm": "tab:blue",
    "kfac": "tab:green",
}


def style(config):
    """Matplotlib keywords of a configuration's line: the default stands out."""
    global_, sequential = "global" in config, "sequential" in config
    ls = {(False, False): "-", (True, False): "--", (False, True): ":", (True, True): "-."}
    return {
        "color": COLOURS[config.split()[0]],
        "ls": ls[global_, sequential],
        "lw": 2.5 if "default" in config else 1.2,
        "marker": "s" if "reweight" in config else "o",
    }


def plot(rows, path, baseline, task):
    """Accuracy against size, without and with tuning (ablations of G's shrinkage left out)."""
    keys = [k for k in ("test_accuracy", "tuned_accuracy") if any(k in r for r in rows)]
    fig, axes = page_figure(1, len(keys), height=3.2, sharey=True)
    for ax, key in zip(axes[0], keys, strict=True):
        for config in dict.fromkeys(r["method"] for r in rows if "shrunk" not in r["method"]):
            sel = [r for r in rows if r["method"] == config and key in r]
            if sel:
                x, y = [r["params_kept"] for r in sel], [r[key] for r in sel]
                ax.plot(x, y, label=config, **style(config))
        ax.axhline(baseline, color="black", ls="--", lw=0.8, label="uncompressed")
        ax.set_xlabel("fraction of encoder linear weights kept")
        ax.set_title(f"{task}: " + ("no tuning" if key == "test_accuracy" else "1 epoch of tuning"))
    axes[0][0].set_ylabel("test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 0))
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    save(fig, path)


def markdown(rows, baseline, correlations, majority):
    lines = [
        f"Uncompressed test accuracy {baseline['accuracy']:.3f} (loss {baseline['loss']:.3f}); "
        f"majority class {majority:.3f}.",
        "",
        "| kept | method | accuracy | loss | after tuning | mean output error | compress (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tuned = f"{r['tuned_accuracy']:.3f}" if "tuned_accuracy" in r else "-"
        lines.append(
            f"| {r['params_kept']:.1%} | {r['method']} | {r['test_accuracy']:.3f} | "
            f"{r['test_loss']:.3f} | {tuned} | {r['mean_output_error']:.3f} | "
            f"{r['compress_seconds']} |"
        )
    if correlations:
        lines += ["", "Spearman correlation of per-layer metrics with the damage of plain SVD:"]
        lines += ["", "| metric | loss increase | accuracy drop |", "|---|---|---|"]
        for metric, c in correlations.items():
            lines.append(f"| {metric} | {c['loss_increase']:.2f} | {c['accuracy_drop']:.2f} |")
    return "\n".join(lines) + "\n"


def merge(task, paths):
    """One results file from runs of different configurations or settings of the same task."""
    runs = [json.loads(p.read_text()) for p in paths]
    rows, order = {}, []
    for run in runs:
        assert run["task"] == task, f"{run['task']} is not {task}"
        for row in run["rows"]:
            row["method"] = RENAMED_CONFIGS.get(row["method"], row["method"])
            key = (row["method"], row["ratio"])
            if key not in rows:
                order.append(key)
            rows.setdefault(key, {}).update(row)
    ordered = sorted(order, key=lambda k: (-k[1], list(CONFIGS).index(k[0])))
    merged = [rows[k] for k in ordered]
    payload = {
        "task": task,
        "baseline": runs[0]["baseline"],
        "majority": runs[0]["majority"],
        "rows": merged,
        "merged_from": [
            {"file": p.name, "provenance": r["provenance"]}
            for p, r in zip(paths, runs, strict=True)
        ],
    }
    validation = next((r["metric_validation"] for r in runs if "metric_validation" in r), None)
    if validation:
        payload["metric_validation"] = validation
    correlations = validation["spearman"] if validation else {}
    write_json(RESULTS / f"compression-{task}.json", payload)
    text = markdown(merged, payload["baseline"], correlations, payload["majority"])
    (RESULTS / f"compression-{task}.md").write_text(text)
    plot(merged, RESULTS / f"compression-{task}.png", payload["baseline"]["accuracy"], task)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), default="tweets")
    parser.add_argument("--no-tune", action="store_true", help="skip the tuning epoch")
    parser.add_argument("--quick", action="store_true", help="one ratio, no metric validation")
    parser.add_argument("--methods", nargs="*", help="a subset of the configurations")
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.4, 0.25, 0.15])
    parser.add_argument("--timing-only", action="store_true", help="warm, repeated timings only")
    parser.add_argument(
        "--validate", action="store_true", help="validate the metric even with --methods"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="merge results files of --task (rows by method and ratio; later files add to and "
        "override earlier ones) into results/compression-TASK.*; runs nothing",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.task, [Path(p) for p in args.merge])
        return
    model, tokenizer, data = load_finetuned(args.task)
    stats, _ = statistics(args.task, model, tokenizer, data)
    max_len = TASKS[args.task]["max_len"]
    baseline = evaluate(model, tokenizer, *data["test"], max_len=max_len)
    majority = max(np.bincount(data["test"][1]) / len(data["test"][1]))
    print("baseline", baseline, flush=True)
    configs = {k: v for k, v in CONFIGS.items() if not args.methods or k in args.methods}
    if args.timing_only:
        write_json(
            RESULTS / f"timing-{args.task}.json",
            {"task": args.task, **timings(model, tokenizer, data, stats, args.task, configs)},
        )
        return
    ratios = args.ratios[:1] if args.quick else args.ratios
    rows = compare(model, tokenizer, data, stats, args.task, ratios, configs, tune=not args.no_tune)
    payload = {"task": args.task, "baseline": baseline, "majority": majority, "rows": rows}
    correlations = {}
    if args.validate or not (args.quick or args.methods):
        base, layers, correlations = validate_metric(
            copy.deepcopy(model), tokenizer, data, stats, args.task, ratio=0.1, n_eval=500
        )
        payload["metric_validation"] = {
            "baseline": base,
            "layers": layers,
            "spearman": correlations,
        }
    name = f"compression-{args.task}" + ("-quick" if args.quick or args.methods else "")
    write_json(RESULTS / f"{name}.json", payload)
    (RESULTS / f"{name}.md").write_text(markdown(rows, baseline, correlations, majority))
    plot(rows, RESULTS / f"{name}.png", baseline["accuracy"], args.task)


if __name__ == "__main__":
    main()
