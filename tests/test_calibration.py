"""The calibration pass: hand-computed statistics, padding, sharing, merging, state, errors."""

import pytest
import torch
from torch import nn

from sklearn_wsvd.compress import collect_statistics, fisher_importance, merge_statistics


class Net(nn.Module):
    """Two layers reading the same tensor (like q, k, v), then one more."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(3, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x):
        return self.c(torch.tanh(self.a(x) + self.b(x)))


def test_inputs_fisher_and_output_gradients_match_a_hand_computation():
    net = Net()
    x = torch.randn(6, 3)
    y = torch.randint(0, 2, (6,))
    loss_fn = nn.CrossEntropyLoss()
    stats = collect_statistics(
        net,
        [(x[:3], y[:3]), (x[3:], y[3:])],
        collect=("inputs", "fisher", "output_gradients"),
        loss_fn=loss_fn,
    )
    # By hand: the inputs of c, the gradients of each batch's loss.
    C_a = (x.T @ x).double() / 6
    torch.testing.assert_close(stats["a"].input_second_moment, C_a)
    torch.testing.assert_close(stats["a"].input_mean_abs, x.abs().mean(0).double())
    assert stats["a"].inputs is stats["b"].inputs  # read the same tensor: one matrix
    fisher = torch.zeros(4, 3, dtype=torch.float64)
    G = torch.zeros(2, 2, dtype=torch.float64)
    hidden_gram = torch.zeros(4, 4, dtype=torch.float64)
    for xb, yb in ((x[:3], y[:3]), (x[3:], y[3:])):
        h = torch.tanh(net.a(xb) + net.b(xb))
        out = net.c(h)
        loss = loss_fn(out, yb)
        g_w, g_out = torch.autograd.grad(loss, [net.a.weight, out])
        fisher += g_w.double().square()
        G += (g_out.T @ g_out).double()
        hidden_gram += (h.T @ h).double().detach()
    torch.testing.assert_close(stats["a"].fisher, fisher / 2)
    torch.testing.assert_close(stats["c"].output_gradient_moment, G / 2)
    torch.testing.assert_close(stats["c"].input_second_moment, hidden_gram / 6)
    assert stats["c"].n_losses == 2 and stats["c"].inputs.n_tokens == 6
    # fisher_importance is the same statistic.
    F = fisher_importance(net, [(x[:3], y[:3]), (x[3:], y[3:])], loss_fn=loss_fn)
    torch.testing.assert_close(F["a"].double(), fisher / 2, rtol=1e-6, atol=1e-9)


def test_output_gradients_alone_take_no_weight_gradient_and_match_the_full_pass():
    """Without a Fisher, the backward pass starts from the first layers' inputs made
    leaves: no weight requires or gets a gradient, and every statistic is the same."""
    net = Net()
    x = torch.randn(6, 3)
    y = torch.randint(0, 2, (6,))
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    loss_fn = nn.CrossEntropyLoss()
    full = collect_statistics(
        net, batches, collect=("inputs", "fisher", "output_gradients"), loss_fn=loss_fn
    )
    seen = []
    for p in net.parameters():
        p.register_hook(lambda g: seen.append(g))
    alone = collect_statistics(
        net, batches, collect=("inputs", "output_gradients"), loss_fn=loss_fn
    )
    assert seen == []  # no weight's gradient was computed
    assert alone["a"].inputs is alone["b"].inputs  # the shared input is still one matrix
    for name in "abc":
        torch.testing.assert_close(
            alone[name].output_gradient_moment, full[name].output_gradient_moment
        )
        torch.testing.assert_close(alone[name].input_second_moment, full[name].input_second_moment)
        assert alone[name].n_losses == 2
    assert all(p.requires_grad and p.grad is None for p in net.parameters())


def test_padding_tokens_are_left_out():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = transformers.BertModel(config).eval()
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    stats = collect_statistics(
        model, [{"input_ids": ids, "attention_mask": mask}], target_modules=r".*query"
    )
    captured = []
    query = model.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda m, a, o: captured.append(a[0]))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    tokens = captured[0][mask.bool()]  # the 11 real tokens
    st = stats["encoder.layer.0.attention.self.query"]
    assert st.inputs.n_tokens == 11
    torch.testing.assert_close(
        st.input_second_moment, (tokens.T @ tokens).double() / 11, rtol=1e-5, atol=1e-6
    )


def test_state_is_restored_and_hooks_removed():
    net = Net()
    net.train()
    net.a.weight.requires_grad_(False)
    sentinel = torch.ones_like(net.b.weight)
    net.b.weight.grad = sentinel
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    collect_statistics(
        net, [(x, y)], collect=("inputs", "output_gradients"), loss_fn=nn.CrossEntropyLoss()
    )
    assert net.training and not net.a.weight.requires_grad and net.b.weight.requires_grad
    assert net.b.weight.grad is sentinel and net.c.weight.grad is None
    assert all(not m._forward_hooks for m in net.modules())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # Even when a batch fails half-way.
    with pytest.raises(RuntimeError):
        collect_statistics(net, [(x,), (torch.randn(4, 5),)])
    assert net.training and all(not m._forward_hooks for m in net.modules())


def test_merging_two_halves_equals_one_pass():
    net = Net()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    kinds = ("inputs", "fisher", "output_gradients")
    kw = dict(collect=kinds, loss_fn=nn.CrossEntropyLoss())
    whole = collect_statistics(net, [(x[:4], y[:4]), (x[4:], y[4:])], **kw)
    first = collect_statistics(net, [(x[:4], y[:4])], **kw)
    second = collect_statistics(net, [(x[4:], y[4:])], **kw)
    merged = merge_statistics(first, second)
    assert merged["a"].inputs is merged["b"].inputs  # still shared
    for name in whole:
        torch.testing.assert_close(
            merged[name].input_second_moment, whole[name].input_second_moment
        )
        torch.testing.assert_close(merged[name].fisher, whole[name].fisher)
        torch.testing.assert_close(
            merged[name].output_gradient_moment, whole[name].output_gradient_moment
        )
    with pytest.raises(ValueError, match="cannot merge statistics of shapes"):
        merged["a"].merge(merged["c"])


def test_unlabelled_batches_give_inputs_only_and_clear_errors():
    net = Net()
    x = torch.randn(5, 3)
    stats = collect_statistics(net, [(x,)])
    assert stats["a"].has("inputs") and not stats["a"].has("fisher")
    with pytest.raises(ValueError, match=r"hold no 'fisher'.*collect=\[\.\.\., 'fisher'\]"):
        _ = stats["a"].fisher
    with pytest.raises(ValueError, match="has no .loss"):
        collect_statistics(net, [(x,)], collect=("fisher",))
    with pytest.raises(ValueError, match="collect must name some of"):
        collect_statistics(net, [(x,)], collect=("gradients",))
    with pytest.raises(ValueError, match="batches is empty"):
        collect_statistics(net, [])
    y = torch.randint(0, 2, (5,))
    with pytest.raises(ValueError, match=r"must be a scalar tensor, got \(5,\)"):
        collect_statistics(
            net, [(x, y)], collect=("fisher",), loss_fn=nn.CrossEntropyLoss(reduction="none")
        )
    with pytest.raises(ValueError, match="has no gradient"):
        collect_statistics(
            net, [(x, y)], collect=("fisher",), loss_fn=lambda out, t: out.detach().sum()
        )
    with pytest.raises(ValueError, match="must be an \\(inputs, targets\\) pair"):
        collect_statistics(net, [x], collect=("fisher",), loss_fn=nn.CrossEntropyLoss())


def test_layers_outside_the_loss_or_the_forward_are_named_in_a_warning():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.aux = nn.Linear(3, 2)  # runs, but its output is dropped
            self.never = nn.Linear(3, 2)

        def forward(self, x):
            self.aux(x)
            return self.used(x)

    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.warns(UserWarning) as record:
        stats = collect_statistics(
            Partial(), [(x, y)], collect=("inputs", "fisher"), loss_fn=nn.CrossEntropyLoss()
        )
    messages = " ".join(str(w.message) for w in record)
    assert "never ran the layers ['never']" in messages
    assert "does not depend on the layers ['aux']" in messages
    assert not (stats["aux"].fisher > 0).any()


def test_per_sample_fisher_is_the_mean_of_per_sample_squares():
    net = Net()
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    loss_fn = nn.CrossEntropyLoss()
    stats = collect_statistics(net, [(x, y)], collect=("fisher",), loss_fn=loss_fn, per_sample=True)
    expected = sum(
        torch.autograd.grad(loss_fn(net(x[i : i + 1]), y[i : i + 1]), net.c.weight)[0].square()
        for i in range(4)
    )
    torch.testing.assert_close(stats["c"].fisher, expected.double() / 4)
    assert stats["c"].n_losses == 4


def test_each_batch_is_moved_to_the_models_device():
    # A tokenizer's batches are on the CPU; a model on a GPU takes them there. Shown with
    # the meta device, which exists everywhere: the model sees its inputs moved to it.
    from sklearn_wsvd.compress.calibration import _forward

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(2, device="meta"))
            self.seen = []

        def forward(self, *args, **kwargs):
            self.seen += [t.device.type for t in (*args, *kwargs.values())]

    model = Recorder()
    x = torch.zeros(3, 2)
    for batch in ({"input_ids": x, "mask": x}, (x, x), [x], x):
        model.seen.clear()
        _forward(model, batch, None)
        assert model.seen and set(model.seen) == {"meta"}
    assert x.device.type == "cpu"  # the caller's tensors are not moved
