"""The whole default workflow on decoders of other architectures than the benchmarks'.

Each model is a tiny random instance built from transformers' own config class:
calibrated on text alone (a causal LM's tokens are its labels), compressed with
the default method under a budget, saved, and loaded back by
``AutoModelForCausalLM.from_pretrained`` and by ``load_compressed``, which must
give the same logits. The
architectures differ in what the compression meets: fused query-key-value
projections (Phi-3, Falcon, GPT-NeoX, BLOOM), a parallel attention and MLP
(GPT-J, Falcon), biases, GELU or gated MLPs, mixtures of experts (Mixtral),
normalised queries and keys (Qwen3, OLMo-2) and sliding windows.
"""

import pytest
import torch

from sklearn_wsvd.compress import compress_model, load_compressed, save_compressed

transformers = pytest.importorskip("transformers")

VOCAB = 64
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=1,
)
ARCHITECTURES = {
    "Qwen3": dict(head_dim=8),
    "Phi3": {},
    "Olmo2": {},
    "Mistral": {"sliding_window": 4},
    "GPTNeoX": dict(num_key_value_heads=4),
    "Falcon": dict(num_key_value_heads=4, new_decoder_architecture=False),
    "Bloom": dict(n_layer=2, n_head=4),
    "GPTJ": dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64),
    "OPT": dict(ffn_dim=64, word_embed_proj_dim=32),
    "Mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
}


def text_batches(n=3):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(2, VOCAB, (2, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0  # a shorter text, padded
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_text_calibrates_compresses_saves_and_loads(tmp_path, name):
    config_class = getattr(transformers, f"{name}Config", None)
    if config_class is None:
        pytest.skip(f"this transformers has no {name}")
    torch.manual_seed(0)
    config = config_class(**{**SIZES, **ARCHITECTURES[name]})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    batches = text_batches()
    small, report = compress_model(model, param_budget=0.5, batches=batches, progress=False)
    assert report.method == "kfac"
    assert 0.4 < report.params_after / report.params_before <= 0.5
    with torch.no_grad():
        before = model(**batches[0]).logits
        after = small(**batches[0]).logits
    assert torch.isfinite(after).all() and not torch.equal(after, before)
    save_compressed(small, tmp_path, report=report)
    # Mixtral's experts are one tensor in the model and one per expert in checkpoints,
    # which transformers converts as it loads them.
    for loaded in (
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval(),
        load_compressed(tmp_path),
    ):
        assert type(loaded) is type(model)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batches[0]).logits, after, rtol=0, atol=0)
