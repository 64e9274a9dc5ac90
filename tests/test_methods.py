"""Compression methods: what each optimises, the default, allocation, sequential calibration."""

import numpy as np
import pytest
import torch
from test_compress import tiny_bert, token_batches
from torch import nn

from sklearn_wsvd.compress import (
    METHODS,
    allocate_ranks,
    collect_statistics,
    compress_model,
    load_compressed,
    save_compressed,
)
from sklearn_wsvd.compress._sequential import stages
from sklearn_wsvd.metrics import loss_estimate, output_error, svd_risk, truncated


def correlated_mlp(seed=0):
    """An MLP whose hidden inputs are strongly correlated (as a transformer's are)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(24, 48), nn.Tanh(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 4)
    )
    return model.eval()


def data(n=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(24, 24, generator=gen) * torch.logspace(0, -2, 24)  # anisotropic inputs
    x = torch.randn(n, 24, generator=gen) @ mix
    y = torch.randint(0, 4, (n,), generator=gen)
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, n, 64)]


@pytest.fixture(scope="module")
def stats():
    return collect_statistics(
        correlated_mlp(),
        data(),
        collect=("inputs", "fisher", "output_gradients"),
        loss_fn=nn.CrossEntropyLoss(),
        per_sample=False,
    )


def test_each_method_minimises_its_own_objective(stats):
    model = correlated_mlp()
    W = model[2].weight.detach().double()
    st = stats["2"]
    C, G, F = st.input_second_moment, st.output_gradient_moment, st.fisher
    fitted = {}
    for name in ("svd", "svd-llm", "kfac", "fisher-rank1", "tfwsvd"):
        small, _ = compress_model(
            model,
            rank={"0": 10, "2": 6, "4": 2},
            method=name,
            statistics=stats,
            metric_damping=0.0,
            min_saving=0.0,
            progress=False,
            dtype="float64",
        )
        fitted[name] = small[2].to_dense().detach().double()
    out = {k: output_error(W, v, C) for k, v in fitted.items()}
    kfac = {
        k: loss_estimate(W, v, input_moment=C, output_gradient_moment=G) for k, v in fitted.items()
    }
    fisher = {k: loss_estimate(W, v, importance=F) for k, v in fitted.items()}
    assert min(out, key=out.get) == "svd-llm" and out["svd-llm"] < 0.9 * out["svd"]
    assert min(kfac, key=kfac.get) == "kfac"
    assert min(fisher, key=fisher.get) == "tfwsvd"
    rel = {k: float((W - v).norm()) for k, v in fitted.items()}
    assert min(rel, key=rel.get) == "svd"


def test_report_errors_match_the_metrics(stats):
    model = correlated_mlp()
    small, report = compress_model(
        model, rank=6, method="kfac", statistics=stats, min_saving=0.0, progress=False
    )
    row = {r.name: r for r in report.layers}["2"]
    W = model[2].weight.detach().double()
    st = stats["2"]
    C, G = st.input_second_moment, st.output_gradient_moment
    W_hat = small[2].to_dense().detach().double()
    assert row.output_error == pytest.approx(output_error(W, W_hat, C), rel=1e-6)
    assert row.loss_estimate == pytest.approx(
        loss_estimate(W, W_hat, input_moment=C, output_gradient_moment=G), rel=1e-6
    )
    # Plain SVD's columns are the "svd" method's fit (float32 by default): exact to rounding.
    assert row.svd_loss_estimate == pytest.approx(
        svd_risk(W, rank=6, input_moment=C, output_gradient_moment=G), rel=1e-4
    )
    assert row.svd_output_error == pytest.approx(output_error(W, truncated(W, 6), C), rel=1e-4)
    assert row.loss_estimate < row.svd_loss_estimate


def test_sequential_only_when_asked(stats):
    model = correlated_mlp()
    batches = [(x,) for x, _ in data()]
    _, report = compress_model(model, ratio=0.5, batches=batches, progress=False)
    assert not report.sequential and report.method == "svd-llm"
    _, report = compress_model(model, ratio=0.5, batches=batches, sequential=True, progress=False)
    assert report.sequential and report.method == "svd-llm"
    with pytest.raises(ValueError, match="needs the calibration batches as a sequence"):
        compress_model(model, ratio=0.5, batches=iter(batches), sequential=True)


def test_auto_picks_what_the_statistics_allow(stats):
    model = correlated_mlp()
    inputs_only = collect_statistics(model, [(x,) for x, _ in data()])
    fisher_only = {n: s.fisher for n, s in stats.items()}
    cases = [
        (dict(statistics=stats), "kfac"),
        (dict(statistics=inputs_only), "svd-llm"),
        (dict(importance=fisher_only), "tfwsvd"),
        ({}, "svd"),
        (dict(batches=data(), loss_fn=nn.CrossEntropyLoss()), "kfac"),
        (dict(batches=[(x,) for x, _ in data()]), "svd-llm"),
    ]
    for kwargs, expected in cases:
        _, report = compress_model(model, ratio=0.5, progress=False, **kwargs)
        assert report.method == expected, kwargs.keys()
    with pytest.raises(ValueError, match=r"method 'kfac' needs \['output_gradients'\]"):
        compress_model(model, ratio=0.5, method="kfac", statistics=inputs_only)
    with pytest.raises(ValueError, match="Unknown method 'pca'; choose one of"):
        compress_model(model, ratio=0.5, method="pca", statistics=stats)


def test_full_rank_is_exact_for_every_method(stats):
    model = correlated_mlp()
    x = data()[0][0]
    for name in METHODS:
        small, _ = compress_model(
            model,
            rank={"0": 24, "2": 32, "4": 4},
            method=name,
            statistics=stats,
            min_saving=0.0,
            progress=False,
            dtype="float64",
            max_iter=5,
        )
        with torch.no_grad():
            torch.testing.assert_close(small(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_weight_with_nan_is_refused_by_every_method(stats):
    # A NaN in a layer's weight is damage: the estimator would now read it as a missing
    # entry, and "svd" returned finite factors of the zero-filled weight.
    weight = correlated_mlp()[0].weight.detach().clone()
    weight[0, 0] = float("nan")
    for method in METHODS.values():
        with pytest.raises(ValueError, match="NaN or infinite"):
            method.factorise(weight, stats["0"], 4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_round_trips_through_save_and_load(method, tmp_path):
    bert = tiny_bert()
    batches = token_batches()
    st = collect_statistics(
        bert,
        batches,
        collect=("inputs", "fisher", "output_gradients"),
        target_modules=r".*encoder.*",
    )
    small, report = compress_model(
        bert,
        ratio=0.4,
        method=method,
        statistics=st,
        target_modules=r".*encoder.*",
        progress=False,
        max_iter=3,
    )
    assert report.method == method and all(r.rank for r in report.layers)
    save_compressed(small, tmp_path / method)
    loaded = load_compressed(tmp_path / method).eval()
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, small(input_ids=ids).logits)


def test_global_allocation_in_the_kfac_currency_is_optimal_for_kfac(stats):
    """Greedy allocation on the exact K-FAC curves minimises the summed loss estimate."""
    model = correlated_mlp()
    names = ["0", "2"]
    weights = {n: model.get_submodule(n).weight.detach() for n in names}
    budget = 12 * (48 + 24) // 2 + 8 * (32 + 48) // 2
    ranks = allocate_ranks(weights, {n: stats[n] for n in names}, budget, metric_damping=0.0)
    assert sum(ranks[n] * sum(weights[n].shape) for n in names) <= budget

    def total(r):
        return sum(svd_kfac(weights[n], stats[n], r[n]) for n in names)

    best = min(
        (total({"0": a, "2": b}), a, b)
        for a in range(1, 24)
        for b in range(1, 32)
        if a * 72 + b * 80 <= budget
    )
    assert total(ranks) == pytest.approx(best[0], rel=1e-6)


def svd_kfac(W, st, k):
    """The K-FAC closed form's loss estimate at rank k: the tail of G^1/2 W C^1/2."""
    C, G = st.input_second_moment.numpy(), st.output_gradient_moment.numpy()

    def root(M):
        vals, vecs = np.linalg.eigh(M)
        return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T

    s = np.linalg.svd(root(G) @ W.double().numpy() @ root(C), compute_uv=False)
    return 0.5 * float(np.sum(s[k:] ** 2))


def test_sequential_fits_each_block_to_the_perturbed_inputs():
    model = correlated_mlp()
    batches = data()
    loss_fn = nn.CrossEntropyLoss()
    kw = dict(
        rank={"0": 4, "2": 6, "4": 2},
        method="svd-llm",
        batches=batches,
        loss_fn=loss_fn,
        min_saving=0.0,
        progress=False,
        dtype="float64",
    )
    plain, plain_report = compress_model(model, sequential=False, **kw)
    seq, seq_report = compress_model(model, sequential=True, **kw)
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        target = model[2](torch.tanh(model[0](x))) - model[2].bias
        errors = {
            name: float(
                (m[2](torch.tanh(m[0](x))) - m[2].out_proj.bias - target).norm() / target.norm()
            )
            for name, m in (("plain", plain), ("sequential", seq))
        }
    # The second layer corrects (part of) what the first one's compression changed: the
    # sequential fit is the optimum of that error, the plain one a feasible point.
    assert errors["sequential"] < 0.97 * errors["plain"]
    row = {r.name: r for r in seq_report.layers}["2"]
    assert row.output_error == pytest.approx(errors["sequential"], rel=1e-4)
    # The first block sees the original inputs: the same fit as without sequential.
    torch.testing.assert_close(seq[0].to_dense(), plain[0].to_dense())
    # At full rank nothing changes.
    full, _ = compress_model(
        model,
        rank={"0": 24, "2": 32, "4": 4},
        method="svd-llm",
        batches=batches,
        loss_fn=loss_fn,
        sequential=True,
        min_saving=0.0,
        progress=False,
        dtype="float64",
    )
    with torch.no_grad():
        torch.testing.assert_close(full(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs the calibration batches as a sequence"):
        compress_model(model, ratio=0.5, sequential=True, batches=iter(batches))
    with pytest.raises(ValueError, match="does not use the inputs"):
        compress_model(model, ratio=0.5, sequential=True, batches=batches, method="svd")


def test_sequential_reweight_keeps_the_weight_and_weights_it_by_the_perturbed_inputs():
    model = correlated_mlp()
    batches = data()
    kw = dict(
        rank={"0": 4, "2": 6, "4": 2},
        method="svd-llm",
        batches=batches,
        loss_fn=nn.CrossEntropyLoss(),
        min_saving=0.0,
        metric_damping=0.0,
        progress=False,
        dtype="float64",
    )
    fits = {
        mode: compress_model(model, sequential=mode, **kw) for mode in (False, "reweight", True)
    }
    assert [fits[m][1].sequential for m in fits] == [False, "reweight", "refit"]
    x = torch.cat([b[0] for b in batches]).double()
    W = model[2].weight.detach().double()
    with torch.no_grad():
        x_tilde = torch.tanh(fits["reweight"][0][0].double()(x))  # what layer 2 reads

    def weighted_error(compressed):
        return float(((W - compressed[2].to_dense().detach().double()) @ x_tilde.T).norm())

    # "reweight" is the optimum of |(W - W') X~| at rank 6: below the plain fit (whose metric
    # is the original inputs') and the refit (whose target is not W).
    errors = {m: weighted_error(fits[m][0]) for m in fits}
    assert errors["reweight"] < errors[False] and errors["reweight"] < errors[True]
    with pytest.raises(ValueError, match="sequential must be False, True, 'refit' or 'reweight'"):
        compress_model(model, ratio=0.5, sequential="yes", batches=batches)


def test_stages_follow_the_blocks_of_a_transformer():
    bert = tiny_bert()
    names = [n for n, m in bert.named_modules() if isinstance(m, nn.Linear)]
    groups = stages(bert, names)
    assert [len(g) for g in groups] == [6, 6, 1, 1]  # two blocks, the pooler, the head
    assert all(n.startswith("bert.encoder.layer.0.") for n in groups[0])


@pytest.mark.parametrize("make", ["bert", "gpt2", "llama", "gemma2", "gemma3"])
def test_block_runner_matches_full_forward_passes(make, monkeypatch):
    """Running block by block on cached hidden states is the same computation.

    Each block with its own arguments: Gemma-2's sliding-window layers get a
    mask of their own (with the first block's, the compressed layers were
    fitted to other hidden states than the model computes).
    """
    from test_compress import tiny_gpt2
    from test_io import tiny_gemma2, tiny_gemma3, tiny_llama

    from sklearn_wsvd.compress import _sequential

    model = {
        "bert": tiny_bert,
        "gpt2": tiny_gpt2,
        "llama": tiny_llama,
        "gemma2": tiny_gemma2,
        "gemma3": tiny_gemma3,
    }[make]()
    batches = token_batches(n_batches=2, size=3)
    if make != "bert":  # causal LMs: rotary positions (llama) and a padded row
        batches = [{"input_ids": b["input_ids"]} for b in batches]
        for b in batches:
            b["attention_mask"] = torch.ones_like(b["input_ids"])
            b["attention_mask"][1, -4:] = 0
            b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    else:
        for b in batches:
            b["attention_mask"] = torch.ones_like(b["input_ids"])
            b["attention_mask"][0, -3:] = 0
    kw = dict(
        ratio=0.3,
        method="svd-llm",
        batches=batches,
        sequential=True,
        progress=False,
        dtype="float64",
    )
    fast, report = compress_model(model, **kw)
    names = [r.name for r in report.layers]
    groups = _sequential.stages(model, names)
    assert _sequential.BlockRunner.create(model, groups, batches, None) is not None
    calls = []
    original = _sequential.BlockRunner.create
    monkeypatch.setattr(
        _sequential.BlockRunner, "create", classmethod(lambda cls, *a: calls.append(1))
    )
    slow, slow_report = compress_model(model, **kw)
    monkeypatch.setattr(_sequential.BlockRunner, "create", original)
    assert calls  # the slow path really ran
    for a, b in zip(report.layers, slow_report.layers, strict=True):
        assert a.output_error == pytest.approx(b.output_error, rel=1e-6, abs=1e-9)
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids)[0], slow(input_ids=ids)[0])


def test_a_budget_without_a_loss_is_spread_uniformly(stats):
    from sklearn_wsvd.compress import LayerStatistics

    model = correlated_mlp()
    inputs_only = {n: LayerStatistics(s.shape, s.inputs) for n, s in stats.items()}
    kw = dict(statistics=inputs_only, min_saving=0.0, progress=False)
    _, budget = compress_model(model, param_budget=0.3, **kw)
    _, ratio = compress_model(model, ratio=0.3, **kw)
    assert [r.rank for r in budget.layers] == [r.rank for r in ratio.layers]
    # With the curvature the same budget goes where the loss estimate says.
    _, kfac = compress_model(
        model, param_budget=0.3, statistics=stats, min_saving=0.0, progress=False
    )
    assert [r.rank for r in kfac.layers] != [r.rank for r in ratio.layers]
    assert kfac.params_after <= 0.3 * kfac.params_before


def test_the_metrics_name_mis_shaped_input():
    W, Wh = np.diag([3.0, 2.0, 1.0]), np.diag([3.0, 2.0, 0.0])
    cases = [
        (lambda: output_error(W, Wh, np.array([1.0, 2.0, 3.0])), r"input_moment must be \(3, 3\)"),
        (lambda: output_error(W, np.zeros((3, 1)), np.eye(3)), "must be matrices of one shape"),
        (lambda: loss_estimate(W, Wh, importance=np.ones(3)), "importance must have the weight"),
        (lambda: loss_estimate(W, Wh, importance=-np.ones((3, 3))), "must be non-negative"),
        (
            lambda: loss_estimate(W, Wh, input_moment=np.eye(3), output_gradient_moment=np.eye(2)),
            r"output_gradient_moment must be \(3, 3\)",
        ),
        (lambda: svd_risk(W, np.ones((3, 3)), rank=-1), "rank must be a positive integer"),
        (lambda: svd_risk(W, np.ones((3, 3)), rank=True), "rank must be a positive integer"),
        (lambda: svd_risk(W, np.ones((3, 3)), rank=2.5), "rank must be a positive integer"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert output_error(W, Wh, np.diag([1.0, 2.0, 3.0])) == pytest.approx((3 / 20) ** 0.5)
    zero = np.zeros((3, 3))  # a zero layer (or zero inputs): exact if kept, else infinitely off
    assert output_error(zero, zero, np.eye(3)) == 0.0 and output_error(W, Wh, zero) == 0.0
    assert output_error(zero, Wh, np.eye(3)) == float("inf")


def test_blocks_run_twice_per_pass_get_full_passes_not_a_runner():
    # Interleaved reuse (0, 1, 0, 1), as in looped or universal transformers: the
    # first pass through the stack looks in order, so the whole pass is checked.
    from sklearn_wsvd.compress._sequential import BlockRunner

    class Looped(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8)) for _ in range(2)])

        def forward(self, x):
            for _ in range(2):
                for layer in self.layers:
                    x = torch.tanh(layer(x))
            return x

    model = Looped()
    groups = stages(model, ["layers.0.0", "layers.1.0"])
    assert BlockRunner.create(model, groups, [(torch.randn(4, 8),)], None) is None
