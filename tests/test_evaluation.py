"""Evaluation helpers: token- and sample-weighted means, no padding, the model left as found."""

import math

import pytest
import torch
from torch import nn

from sklearn_wsvd.compress import accuracy, embeddings, perplexity

transformers = pytest.importorskip("transformers")


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=30, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval()


def token_loss(model, ids):
    """Summed next-token cross-entropy of one unpadded text, and its number of predictions."""
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0]
    loss = nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum")
    return float(loss), len(ids) - 1


def test_perplexity_weighs_every_token_once_and_skips_padding():
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 30, (n,), generator=gen) for n in (9, 3, 6)]
    sums = [token_loss(model, t) for t in texts]
    expected = math.exp(sum(s for s, _ in sums) / sum(n for _, n in sums))
    # One padded batch (right padding with a token that must not count) ...
    ids = torch.full((3, 9), 7)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(texts):
        ids[i, : len(t)], mask[i, : len(t)] = t, 1
    padded = perplexity(model, [{"input_ids": ids, "attention_mask": mask}])
    # ... and batches of different sizes: the mean of batch losses would differ.
    separate = perplexity(model, [{"input_ids": texts[0][None]}, {"input_ids": texts[1][None]}])
    assert padded == pytest.approx(expected, rel=1e-5)
    expected_two = math.exp((sums[0][0] + sums[1][0]) / (sums[0][1] + sums[1][1]))
    assert separate == pytest.approx(expected_two, rel=1e-5)
    # A Hugging Face model's own loss agrees on one unpadded batch.
    with torch.no_grad():
        hf = model(input_ids=texts[0][None], labels=texts[0][None]).loss
    assert perplexity(model, [{"input_ids": texts[0][None]}]) == pytest.approx(
        math.exp(float(hf)), rel=1e-5
    )


def test_perplexity_labels_skip_a_prompt():
    model = tiny_gpt2()
    ids = torch.arange(10)[None] % 30
    labels = ids.clone()
    labels[0, :5] = -100  # score the answer only
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    loss = nn.functional.cross_entropy(logits[4:-1], ids[0, 5:])
    got = perplexity(model, [{"input_ids": ids, "labels": labels}])
    assert got == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_evaluation_leaves_the_model_as_it_was():
    model = tiny_gpt2().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perplexity(model, [{"input_ids": torch.randint(0, 30, (2, 8))}])
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # In train mode dropout would make two calls differ; evaluation is deterministic.
    batch = [{"input_ids": torch.randint(0, 30, (2, 8))}]
    assert perplexity(model, batch) == perplexity(model, batch)


def test_accuracy_multiclass_binary_and_hugging_face_batches():
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    X = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 0, 0], [0, 5.0, 0]])
    y = torch.tensor([0, 1, 2, 1, 1])
    acc, loss = accuracy(model, [(X[:2], y[:2]), (X[2:], y[2:])])
    assert acc == 0.8
    expected = nn.functional.cross_entropy(X, y)  # sample-weighted over both batches
    assert loss == pytest.approx(float(expected), rel=1e-6)
    # A single logit per sample: positive above 0, binary cross-entropy.
    binary = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        binary.weight.fill_(1.0)
    z = torch.tensor([[2.0], [-1.0], [0.5]])
    t = torch.tensor([1, 1, 0])
    acc, loss = accuracy(binary, [(z, t)])
    assert acc == pytest.approx(1 / 3)
    bce = nn.functional.binary_cross_entropy_with_logits(z[:, 0], t.float())
    assert loss == pytest.approx(float(bce), rel=1e-6)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    bert = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 20, (6, 5))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        out = bert(input_ids=ids, labels=labels)
    acc, loss = accuracy(
        bert,
        [
            {"input_ids": ids[:4], "labels": labels[:4]},
            {"input_ids": ids[4:], "labels": labels[4:]},
        ],
    )
    assert acc == pytest.approx(float((out.logits.argmax(1) == labels).float().mean()))
    assert loss == pytest.approx(float(out.loss), rel=1e-5)


def test_embeddings_leave_padding_out():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    model = transformers.BertModel(config).eval()
    short = torch.tensor([[2, 5, 7]])
    padded = torch.tensor([[2, 5, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    alone = embeddings(model, [{"input_ids": short}])
    together = embeddings(model, [{"input_ids": padded, "attention_mask": mask}])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = model(input_ids=short).last_hidden_state.mean(1)
    torch.testing.assert_close(alone, expected)


def test_evaluation_errors():
    model = tiny_gpt2()
    with pytest.raises(ValueError, match="no token to predict"):
        perplexity(model, [{"input_ids": torch.tensor([[3]])}])
    with pytest.raises(ValueError, match="takes dicts"):
        perplexity(model, [(torch.tensor([[3, 4]]),)])
    ids = torch.tensor([[3, 4, 9, 2]])  # token ids alone are input_ids
    assert perplexity(model, [ids]) == perplexity(model, [{"input_ids": ids}])
    with pytest.raises(ValueError, match="batches is empty"):
        accuracy(nn.Linear(2, 2), [])
    with pytest.raises(ValueError, match="needs labelled batches"):
        accuracy(model, [{"input_ids": torch.tensor([[3, 4]])}])


def test_a_perplexity_beyond_floats_is_inf_not_an_overflow_error():
    class Sure(nn.Module):  # certain of token 0, which never comes
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(*input_ids.shape, 5)
            logits[..., 0] = 1e4
            return type("Out", (), {"logits": logits + self.p})()

    assert perplexity(Sure(), [{"input_ids": torch.tensor([[1, 2, 3, 4]])}]) == math.inf


def test_embeddings_of_a_model_with_a_head_are_its_bodys_with_one_extra_pass():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    model = transformers.BertForTokenClassification(config)
    batches = [{"input_ids": torch.randint(0, 30, (3, 7))} for _ in range(3)]
    passes = []
    model.register_forward_hook(lambda *args: passes.append(1))
    torch.testing.assert_close(embeddings(model, batches), embeddings(model.bert, batches))
    assert len(passes) == len(batches) + 1
