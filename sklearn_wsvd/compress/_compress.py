"""Whole-model compression: choose layers, allocate ranks, factorise each layer, report."""

from __future__ import annotations

import copy
import itertools
import time
import warnings
from collections.abc import Mapping
from numbers import Real

import torch
from joblib import Parallel, delayed
from torch import nn
from tqdm.auto import tqdm

from .._solvers import SOLVERS
from .._validation import is_positive_int
from ..metrics import loss_estimate, output_error
from ._format import _listed, aliases
from ._sequential import (
    BlockRunner,
    corrected,
    layer_statistics,
    paired_errors,
    paired_inputs,
    stages,
)
from ._targets import find_targets
from .allocation import (
    LOSS_KINDS,
    allocation_name,
    check_rank,
    parse_budget,
    rank_gains,
    resolve_ranks,
    spend_budget,
    statistics_kinds,
    uniform_budget_ranks,
)
from .calibration import (
    LayerStatistics,
    NoLossGradientError,
    collect_statistics,
    statistics_from_importance,
    with_text_labels,
)
from .layers import LowRankLinear, dense_weight, linear_shape, set_submodule
from .methods import DEFAULT_DAMPING, METHODS, OUTPUT_DAMPING, get_method
from .report import CompressionReport, LayerReport

# The default method: of those fitted in one pass, the one that measured best
# (benchmarks/bench_compression.py, bench_decoder.py).
DEFAULT_METHOD = "kfac"
# A factorised layer must save at least this fraction of its weights, or it stays dense:
# a second matmul for a few percent is a loss in speed.
DEFAULT_MIN_SAVING = 0.1
# sequential= values and what they mean (True is the first mode offered, kept as "refit").
SEQUENTIAL_MODES = {False: False, True: "refit", "refit": "refit", "reweight": "reweight"}


def _errors(W, W_hat, stats):
    """Relative, output and loss-estimate errors of ``W_hat`` for ``W`` (float64 tensors)."""
    out = {"relative_error": float((W - W_hat).norm() / W.norm().clamp_min(1e-300))}
    if stats is None:
        return out
    if stats.has("inputs"):
        C = stats.input_second_moment
        out["output_error"] = output_error(W, W_hat, C)
        if stats.has("output_gradients"):
            G = stats.output_gradient_moment
            out["loss_estimate"] = loss_estimate(W, W_hat, input_moment=C, output_gradient_moment=G)
            return out
    if stats.has("fisher"):
        out["loss_estimate"] = loss_estimate(W, W_hat, importance=stats.fisher)
    return out


def _factorise(name, weight, stats, rank, method, options, risk_threshold, report=True):
    """One layer's job (tensors in, tensors out, so that any joblib backend can run it).

    ``report=False`` skips the errors: a sequential fit's are measured on its paired inputs.
    """
    start = time.perf_counter()
    if rank is None:
        return name, None, None, "dense", {}, time.perf_counter() - start
    W = weight.detach().to(torch.float64)
    if not torch.isfinite(W).all():
        raise ValueError(f"layer {name!r}: its weight contains NaN or infinite values.")
    # Plain SVD's errors at the same rank, for the report (the method's own when it is "svd").
    svd_errors = _errors(W, _plain_svd(weight, rank), stats) if report and method != "svd" else None
    if risk_threshold is not None and svd_errors["loss_estimate"] < risk_threshold:
        options = {**options, "solver": "rank1"}
    try:
        A, B, solver = get_method(method).factorise(weight.detach(), stats, rank, **options)
    except ValueError as exc:
        raise ValueError(f"layer {name!r}: {exc}") from exc
    A, B = _balance(A.to(torch.float64), B.to(torch.float64))
    errors = {}
    if report:
        errors = _errors(W, A @ B, stats)
        errors.update({f"svd_{k}": v for k, v in (svd_errors or errors).items()})
    return name, A, B, solver, errors, time.perf_counter() - start


def _plain_svd(weight, rank):
    """The "svd" method's approximation (a randomized SVD on large layers, as it fits them)."""
    A, B, _ = get_method("svd").factorise(weight.detach(), None, rank)
    return A.to(torch.float64) @ B.to(torch.float64)


def _balance(A, B):
    """Rescale ``A @ B``'s rank-one terms so that both factors' columns/rows have equal norms."""
    scale = (B.norm(dim=1) / A.norm(dim=0).clamp_min(1e-300)).sqrt().clamp_min(1e-12)
    return A * scale, B / scale[:, None]


def _tied(model, names):
    """Target layers whose weight is also another module's parameter (tied to an embedding)."""
    owners = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), set()).add(pname.rpartition(".")[0])
    modules = dict(model.named_modules())
    aliases = _aliases(model)
    tied = []
    for name in names:
        others = owners[id(modules[name].weight)] - set(aliases[name])
        if others:
            tied.append((name, sorted(others)))
    return tied


def _aliases(model):
    """Every name under which each module is registered (a shared module has several)."""
    groups = aliases(dict(model.named_modules(remove_duplicate=False)))
    return {name: group for group in groups for name in group}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def compress_model(
    model: nn.Module,
    rank=None,
    ratio=None,
    param_budget=None,
    *,
    method: str = "auto",
    statistics: dict | None = None,
    batches=None,
    loss_fn=None,
    sequential: bool | str = False,
    importance: dict | None = None,
    target_modules=None,
    exclude_modules=None,
    filter_fn=None,
    min_saving: float = DEFAULT_MIN_SAVING,
    metric_damping: float = DEFAULT_DAMPING,
    output_damping: float = OUTPUT_DAMPING,
    solver: str = "auto",
    risk_threshold: float | None = None,
    inplace: bool = False,
    n_jobs: int | None = None,
    statistics_memory: int | str | None = "auto",
    progress: bool = True,
    **params,
):
    """Replace the targeted linear layers by low-rank factorisations fitted to their statistics.

    Give exactly one of ``rank``, ``ratio`` or ``param_budget``.

    Parameters
    ----------
    model : nn.Module
        Any torch model; ``nn.Linear`` layers and transformers' GPT-2 ``Conv1D``
        layers can be compressed.
    rank : int or dict of str to int, optional
        The same rank for every layer, or one per layer name.
    ratio : float in (0, 1], optional
        Fraction of each layer's weights to keep: rank ``ratio * m n / (m + n)``.
    param_budget : int or float, optional
        Weights to keep over all target layers together: a count (an int) or a
        fraction of their total (a float in (0, 1]). Ranks go where they lower the
        predicted damage most (:func:`allocate_ranks`): with the K-FAC loss
        estimate when output gradients were collected.
    method : str, default="auto"
        A name of :data:`~sklearn_wsvd.compress.METHODS`: "svd", "fwsvd",
        "fisher-rank1", "tfwsvd", "asvd", "svd-llm" or "kfac". "auto" picks
        "kfac" (the Kronecker-factored curvature: the least predicted loss
        increase) when its statistics are there or the batches define a loss
        (they hold ``labels``, or text for a causal LM, its own labels), else
        the best that they allow ("svd-llm" with inputs only, "tfwsvd" with a
        Fisher only, "svd" without statistics). The best recipe measured in one
        pass is "kfac" with ``param_budget`` (ranks spread by the K-FAC loss
        estimate): what ``compress_model(model, param_budget=f, batches=batches)``
        does.
    statistics : dict of str to LayerStatistics, optional
        From :func:`collect_statistics` over calibration batches.
    batches : sequence, optional
        Calibration batches, as for :func:`collect_statistics`. Without
        ``statistics``, they are collected from these (what ``method`` needs).
        Needed by ``sequential``. A target layer that they do not reach (never
        called, as a multimodal model's vision tower on text, or an expert that no
        token is routed to; or without effect on the loss) stays dense, outside
        ``param_budget``, and a warning names it.
    loss_fn : callable, optional
        For ``(inputs, targets)`` batches, as in :func:`collect_statistics`.
    sequential : {False, True, "refit", "reweight"}, default=False
        Fit block by block, each block to the inputs ``X~`` that the
        already-compressed blocks give it (transformer stacks run block by
        block on cached hidden states, about four forward passes over
        ``batches`` in all). ``"refit"`` (or True) refits each layer to
        reproduce its original outputs from those inputs, ``min |W X - W' X~|``,
        so that later layers correct earlier errors (as GPTQ and SVD-LLM's
        update do); ``"reweight"`` keeps the layer's own weight as the target
        and only weights its error by the inputs it will see,
        ``min |(W - W') X~|``. For methods that use the inputs ("asvd",
        "svd-llm", "kfac"); needs ``batches`` as a sequence. Measured
        (``benchmarks/results/``): "refit" helped the two encoders (up to 0.056
        accuracy over the same method in one pass) and ruined a decoder
        (SmolLM2's perplexity 57 -> 745 with "kfac" and a budget at 80% kept:
        each refitted layer's own error is lower, yet the hidden states drift
        over twice as far from the original model's); "reweight" moved the
        encoders' accuracy by -0.020 to +0.012 and lowered "svd-llm"'s perplexity on SmolLM2
        (102 -> 93 at 80% kept). Off unless asked.
    importance : dict of str to tensor, optional
        A diagonal Fisher per layer (:func:`fisher_importance`), for the Fisher
        methods: a shorthand for statistics holding only that.
    target_modules, exclude_modules : str, list of str or None
        A regex on the whole name, or exact names / dotted suffixes; exclusions
        win; the output head (``get_output_embeddings()``, a language model's
        vocabulary projection) is skipped, a classifier's head is not (exclude
        it by name, as the CLI does); an empty match is an error. Layers whose
        weight is tied to another module's (with a warning) and the factors of
        layers already low-rank are skipped.
    filter_fn : callable, optional
        ``filter_fn(module, name) -> bool``, a further choice of layers.
    min_saving : float, default=0.1
        A layer is factorised only if that saves at least this fraction of its
        weights; otherwise it stays dense (and the report says so).
    metric_damping : float, default=0.01
        Damping of the input and output-gradient metrics, relative to their mean
        eigenvalue (see :class:`~sklearn_wsvd.WeightedTruncatedSVD`).
    output_damping : float, default=0.0
        Further shrinkage of the output-gradient moment ``G`` towards isotropy
        (``G + output_damping * mean_eigenvalue * I``) for "kfac" and K-FAC
        budgets: ``G`` comes from few loss directions (a C-class loss has C - 1
        per token), so its small eigenvalues are poorly estimated. On the two
        encoder tasks measured, 0.1 and 1 moved accuracy within noise.
    solver : str, default="auto"
        Solver of the element-wise "tfwsvd" method.
    risk_threshold : float, optional
        With "tfwsvd", spend the iterative solver only where it matters: a layer
        whose SVD risk (the predicted loss increase of plain SVD at its rank) is
        below this gets the cheap "rank1" closed form instead.
    inplace : bool, default=False
        Modify ``model`` itself. Otherwise a copy is compressed; its target
        weights are not copied (they are replaced), so the copy costs only the
        other parameters.
    n_jobs : int or None, default=None
        Layers are independent joblib jobs; None follows the active
        ``joblib.parallel_config`` (a dask cluster, say), else runs them in turn.
    statistics_memory : int, "auto" or None, default="auto"
        The most bytes of calibration statistics gathered from ``batches`` to
        hold at once (``8 in^2`` bytes per layer for the inputs, ``8 out^2``
        for the output gradients, ``8 out in`` for a Fisher; float64, on the
        layers' device). Where every target layer's fit, they are gathered in
        one calibration pass. Where they do not, the layers are taken in
        groups, in the model's order, whose statistics fit: each group's are
        gathered by a calibration pass of its own (on the model as it was: the
        layers are replaced once every group is fitted) and let go once its
        layers are fitted; a budget spread by the loss (``param_budget`` with a
        loss) costs one more pass per group first, for the layers' curves. The
        result is the same either way. "auto": half the memory available on
        the device of the first target layer when the pass starts (CUDA's free
        memory, or the system's available memory on CPU; no bound where
        neither is known). None: no bound. Llama-3-8B's statistics for "kfac"
        take about 180 GB. Not with ``sequential``, which holds every layer's
        statistics ("auto" then only warns where they outgrow half the free memory).
    progress : bool, default=True
        Show a progress bar over the layers.
    **params
        Other parameters of :class:`~sklearn_wsvd.WeightedTruncatedSVD`
        (``max_iter``, ``tol``, ``device``, ``dtype``...).

    Returns
    -------
    model : nn.Module
        The compressed model (``model`` itself when ``inplace``).
    report : CompressionReport
        One row per target layer, and the whole model's parameter counts.

    Examples
    --------
    >>> import torch
    >>> from sklearn_wsvd.compress import compress_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
    ... )
    >>> batches = [(torch.randn(256, 64),)]  # unlabelled calibration data
    >>> small, report = compress_model(model, ratio=0.25, batches=batches, progress=False)
    >>> report.method, [r.rank for r in report.layers]
    ('svd-llm', [8, 1])
    """
    start = time.perf_counter()
    if sum(x is not None for x in (rank, ratio, param_budget)) != 1:
        raise ValueError("Give exactly one of rank, ratio or param_budget.")
    if ratio is not None and not (
        isinstance(ratio, Real) and not isinstance(ratio, bool) and 0 < ratio <= 1
    ):
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}.")
    if not (isinstance(min_saving, Real) and 0 <= min_saving < 1):
        raise ValueError(f"min_saving must be a fraction in [0, 1), got {min_saving!r}.")
    if statistics is not None and importance is not None:
        raise ValueError("Give statistics or importance, not both.")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}.")
    if statistics_memory == "auto":  # a bound only where compress_model gathers statistics
        if batches is None or statistics is not None or importance is not None:
            statistics_memory = None
    elif statistics_memory is not None:
        if not is_positive_int(statistics_memory):
            raise ValueError(
                "statistics_memory must be a positive number of bytes, 'auto' or None, got "
                f"{statistics_memory!r}."
            )
        if batches is None or statistics is not None or importance is not None:
            raise ValueError(
                "statistics_memory bounds the statistics that compress_model gathers from "
                "batches: give batches, and no statistics or importance."
            )
        if sequential:
            raise ValueError("statistics_memory does not combine with sequential.")
    if not isinstance(sequential, (bool, str)) or sequential not in SEQUENTIAL_MODES:
        raise ValueError(
            f"sequential must be False, True, 'refit' or 'reweight', got {sequential!r}."
        )
    sequential = SEQUENTIAL_MODES[sequential]
    reusable = batches is not None and iter(batches) is not batches
    if sequential and not reusable:
        raise ValueError(
            "sequential=True needs the calibration batches as a sequence (a list): they are "
            "passed over twice for every block."
        )
    names = _untied_targets(model, target_modules, exclude_modules, filter_fn)
    dtypes = {n: dense_weight(model.get_submodule(n)).dtype for n in names}
    quantized = [n for n, dtype in dtypes.items() if not dtype.is_floating_point]
    if quantized:
        raise ValueError(
            f"The target layers {_listed(quantized)} hold "
            f"{sorted({str(dtypes[n]) for n in quantized})} weights, not floating-point ones "
            "(a quantized model?): compress the model in float32, float16 or bfloat16, or "
            "leave them out (exclude_modules)."
        )
    shapes = {n: linear_shape(model.get_submodule(n)) for n in names}
    if importance is not None:
        statistics = statistics_from_importance(importance, shapes)
    unreached = []  # layers left without the statistics they need: they stay dense
    if statistics is not None:  # the caller's
        given = {n: statistics[n] for n in names if n in statistics}
        kinds = statistics_kinds(given)  # collected for some layer: empty for others
        if method != "auto":
            kinds = [k for k in get_method(method).needs if k in kinds]
        unreached = _unreached(given, kinds)
        if given and len(unreached) == len(names):
            raise ValueError(_unreached_message(unreached, names))
    if statistics is None and batches is not None:
        method, batches = _method_for_batches(method, model, batches, loss_fn)
    elif method == "auto":
        usable = statistics and {n: st for n, st in statistics.items() if n not in unreached}
        method = _resolve_method(method, usable, provided=("inputs",) if reusable else ())
    _check_sequential(sequential, method)
    needs = []
    if statistics is None and batches is not None:
        needs = list(get_method(method).needs or ("inputs",))
        if sequential and param_budget is None:
            # Each block's inputs come from the sequential pass itself: collecting them for
            # every layer up front would only hold memory.
            needs.remove("inputs")
    # What a layer cannot be fitted without (plain SVD needs nothing: its inputs are only
    # for the report); a layer that the batches leave without it stays dense.
    required = [k for k in needs if k in get_method(method).needs] if needs else []

    def gather(layers):
        # Layers left without statistics stay dense, which one warning says at the end,
        # instead of collect_statistics' advice to exclude them after every pass.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _UNREACHED_WARNINGS, UserWarning)
            try:
                return collect_statistics(
                    model,
                    batches,
                    collect=needs,
                    loss_fn=loss_fn,
                    target_modules=layers,
                    progress=progress,
                )
            except NoLossGradientError:
                if memory_groups is None:  # the whole model: a detached loss, say
                    raise
                return {n: LayerStatistics(shapes[n]) for n in layers}  # a group outside it

    memory_groups = None
    # A budget spread by the loss reads every layer's curve first: a pass more per group.
    curves_first = param_budget is not None and not set(needs).isdisjoint(LOSS_KINDS)
    auto = statistics_memory == "auto"
    if auto:
        free = _available_memory(model.get_submodule(names[0]).weight.device) if needs else None
        statistics_memory = None if free is None else free // 2
    if sequential and statistics_memory is not None:  # only "auto" gets here
        total = sum(_statistics_bytes(shapes[n], needs) for n in names)
        if total > statistics_memory:
            warnings.warn(
                f"The calibration statistics of the {len(names)} target layers take "
                f"{total / 2**30:.3g} GiB, more than half the free memory "
                f"({2 * statistics_memory / 2**30:.3g} GiB), and sequential fitting holds them "
                "all: it may run out of memory. Without sequential, statistics_memory bounds "
                "them.",
                UserWarning,
                stacklevel=2,
            )
        statistics_memory = None
    if statistics_memory is not None:
        memory_groups = _memory_groups(names, shapes, needs, statistics_memory)
        passes = len(memory_groups) * (2 if curves_first else 1)
        if len(memory_groups) == 1:  # all at once, in one pass
            memory_groups = None
        elif not reusable:
            raise ValueError(
                f"The calibration statistics of the {len(names)} target layers outgrow "
                f"statistics_memory ({statistics_memory / 2**30:.3g} GiB): they would be "
                f"gathered by {passes} passes over the batches, which are an iterator that "
                "can be passed over once. Pass them as a sequence (a list)."
            )
        elif auto:
            warnings.warn(
                f"The calibration statistics of the {len(names)} target layers outgrow half "
                f"the free memory ({statistics_memory / 2**30:.3g} GiB): they are gathered in "
                f"{len(memory_groups)} groups of layers, by {passes} calibration passes. "
                "Set statistics_memory to choose the bound.",
                UserWarning,
                stacklevel=2,
            )
    if needs and memory_groups is None:
        statistics = gather(names)
        unreached = _unreached(statistics, required)
        if len(unreached) == len(names):
            raise ValueError(_unreached_message(unreached, names))
    if statistics is not None:
        missing = [n for n in names if n not in statistics]
        if missing:
            raise ValueError(f"statistics has no entry for the target layers {missing}.")
        statistics = {n: statistics[n] for n in names}
        wrong = {
            n: (tuple(st.shape), shapes[n])
            for n, st in statistics.items()
            if tuple(st.shape) != shapes[n]
        }
        if wrong:
            raise ValueError(
                "statistics do not match the layers' shapes ((out, in) of the statistics, of "
                f"the layer): {wrong}; were they collected on another model?"
            )
    provided = needs if memory_groups else ("inputs",) if sequential else ()
    reached = [n for n in names if n not in unreached]
    if statistics is not None:
        statistics = {n: statistics[n] for n in reached}
    method = _resolve_method(method, statistics, provided=provided)
    if solver != "auto" and method != "tfwsvd":
        raise ValueError(f"solver applies to the iterative 'tfwsvd' method only, not {method!r}.")
    if risk_threshold is not None and method != "tfwsvd":
        raise ValueError(
            f"risk_threshold applies to the iterative 'tfwsvd' method only, not {method!r}."
        )
    # The only references to the original weights that compress_model holds: each is let go
    # once its layer is replaced, so that memory falls as the model shrinks.
    weights = {n: dense_weight(model.get_submodule(n)) for n in names}
    damping = {"metric_damping": metric_damping, "output_damping": output_damping}
    kinds = set(needs) if memory_groups else statistics_kinds(statistics)
    if memory_groups and param_budget is not None:
        budget = parse_budget(param_budget, shapes)  # checked before any pass
        if not curves_first:  # as allocate_ranks does with inputs only
            ranks = uniform_budget_ranks(shapes, budget, min_saving)
        else:
            curves = {}
            for group in memory_groups:
                group_stats = gather(group)
                unreached += _unreached(group_stats, required)
                for n in group:
                    stats_n = group_stats.pop(n)
                    if n not in unreached:
                        curves[n] = rank_gains(weights[n], stats_n, metric_damping, output_damping)
            if not curves:
                raise ValueError(_unreached_message(unreached, names))
            fitted = {n: shapes[n] for n in curves}  # the layers reached: the budget is theirs
            ranks = spend_budget(curves, fitted, parse_budget(param_budget, fitted), min_saving)
    else:
        ranks = resolve_ranks(
            rank,
            ratio,
            param_budget,
            {n: weights[n] for n in reached},
            statistics,
            {n: shapes[n] for n in reached},
            min_saving,
            **damping,
        )
    options = dict(params)
    if method == "svd-llm":
        options["metric_damping"] = metric_damping
    if method == "kfac":
        options.update(damping)
    if method == "tfwsvd":
        options["solver"] = solver
    plan = {
        n: None if n in unreached else check_rank(n, ranks[n], shapes[n], min_saving) for n in names
    }
    if not inplace:
        # The weights of the layers to replace are not copied: the copy costs the rest only.
        memo = {id(weights[n]): weights[n] for n in names if plan[n] is not None}
        model = copy.deepcopy(model, memo)
    report = CompressionReport(
        method=method,
        allocation=allocation_name(rank, ratio, kinds),
        sequential=sequential,
        model_params_before=_count(model),
    )
    # Dropout (and LayerDrop) off in the sequential passes, the runner's capture
    # included; every module's own mode is put back after, on an error too (by name:
    # holding the modules would keep the replaced layers' weights alive).
    modes = {name: module.training for name, module in model.named_modules()}
    try:
        if sequential:
            model.eval()
        groups = stages(model, names) if sequential else memory_groups or [names]
        runner = BlockRunner.create(model, groups, batches, loss_fn) if sequential else None
        # Full passes of the original model need the original layers back: keep them only then.
        swaps = sequential and any(runner is None or runner.block_of(g) is None for g in groups)
        replace = _Replacer(model, modes, keep_originals=swaps)
        stats = statistics or {}
        pending = []

        def inputs(name, paired):
            """The weight and statistics a layer is fitted to (perturbed inputs if sequential)."""
            if name not in paired:
                return weights[name], stats.get(name)
            target = weights[name]
            if sequential == "refit":
                target = corrected(target, paired[name], metric_damping)
            return target, layer_statistics(stats.get(name), paired[name], shapes[name])

        # closed on an error too, so that a message after it starts on a line of its own
        with tqdm(total=len(names), desc="compress", disable=not progress) as bar:
            for stage in groups:
                paired = {}
                todo = [n for n in stage if plan[n] is not None]
                if memory_groups and todo:
                    stats = gather(todo)
                    missed = _unreached(stats, required)
                    unreached += missed
                    plan.update(dict.fromkeys(missed))
                block = runner.block_of(stage) if runner is not None else None
                if block is not None:
                    paired = runner.paired_inputs(block, todo) if todo else {}
                elif sequential and todo:
                    paired = paired_inputs(model, todo, replace.swap, batches, loss_fn)
                # A generator: joblib takes the layers one by one, only a few are in flight at once.
                jobs = (
                    delayed(_factorise)(
                        n,
                        *inputs(n, paired),
                        plan[n],
                        method,
                        options,
                        risk_threshold,
                        n not in paired,
                    )
                    for n in stage
                )
                for name, A, B, used, errors, seconds in Parallel(
                    n_jobs=n_jobs, return_as="generator"
                )(jobs):
                    bar.update()
                    m, n = shapes[name]
                    if A is None:
                        if name in unreached:
                            used = "not reached"
                        report.layers.append(
                            LayerReport(name, (m, n), None, m * n, m * n, method, used, 0.0)
                        )
                        continue
                    if name in paired:
                        errors = _sequential_errors(
                            weights[name], A, B, paired.pop(name), stats.get(name)
                        )
                    if memory_groups:  # the next groups calibrate on the model as it was
                        pending.append((name, A, B))
                    else:
                        replace(name, A, B)
                    # streaming: a replaced layer's weight and statistics are let go
                    del weights[name]
                    stats.pop(name, None)
                    k = A.shape[1]
                    report.layers.append(
                        LayerReport(
                            name, (m, n), k, m * n, k * (m + n), method, used, seconds, **errors
                        )
                    )
                if block is not None:
                    runner.advance(block)
        if len(unreached) == len(names):  # known only now where statistics came in groups
            raise ValueError(_unreached_message(unreached, names))
        for name, A, B in pending:
            replace(name, A, B)
    finally:
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)
    if unreached:
        warnings.warn(
            _unreached_message(unreached, names)
            + " They stay dense, outside param_budget: calibrate with batches that reach"
            " them, or leave them out (exclude_modules).",
            UserWarning,
            stacklevel=2,
        )
    report.model_params_after = _count(model)
    report.seconds = time.perf_counter() - start
    return model, report


_UNREACHED_WARNINGS = (
    "The forward passes never ran the layers|The loss does not depend on the layers"
)


def _unreached(statistics, needs) -> list[str]:
    """The layers whose statistics of the kinds ``needs`` are missing or zero: the
    calibration batches never called them, or their output does not reach the loss."""
    return [n for n, st in statistics.items() if not all(st.holds(k) for k in needs)]


def _unreached_message(unreached, names) -> str:
    if len(unreached) == len(names):
        return (
            f"The calibration batches reached none of the {len(names)} target layers: none "
            "was called, or none affects the loss. Are they the model's inputs?"
        )
    return (
        f"The calibration batches did not reach {len(unreached)} of the {len(names)} target "
        f"layers ({_listed(unreached)}): never called, or without effect on the loss."
    )


def _available_memory(device) -> int | None:
    """Bytes free for allocation on ``device`` now (CUDA's free memory, the system's
    available memory on CPU), or None where that is not known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _statistics_bytes(shape, needs) -> int:
    """Bytes of one layer's statistics of the kinds ``needs`` (float64; shared inputs
    counted for every layer that reads them)."""
    out, in_ = shape
    per_kind = {"inputs": in_ * in_ + in_, "output_gradients": out * out, "fisher": out * in_}
    return 8 * sum(per_kind[k] for k in needs)


def _memory_groups(names, shapes, needs, memory: int) -> list[list[str]]:
    """Consecutive groups of ``names`` whose statistics of the kinds ``needs`` fit ``memory``
    bytes (a layer whose own do not is a group of its own)."""
    groups, size = [], 0
    for name in names:
        nbytes = _statistics_bytes(shapes[name], needs)
        if not groups or size + nbytes > memory:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


class _Replacer:
    """Puts the low-rank layers into the model, under every name a module has; can swap back."""

    def __init__(self, model, modes, keep_originals=False):
        self.model = model
        self.modules = dict(model.named_modules())
        self.aliases = _aliases(model)
        self.keep_originals = keep_originals
        self.done = {}
        self.training = modes  # name -> the caller's mode

    def __call__(self, name, A, B):
        """Replace layer ``name`` by ``A @ B``, in its mode, trainable where it was."""
        old = self.modules.pop(name)
        weight = dense_weight(old)
        new = LowRankLinear.from_factors(A.to(weight), B.to(weight), old.bias)
        new.train(self.training[name])
        for p in (new.in_proj.weight, new.out_proj.weight):
            p.requires_grad_(weight.requires_grad)
        if old.bias is not None:
            new.out_proj.bias.requires_grad_(old.bias.requires_grad)
        if self.keep_originals:
            self.done[name] = (old, new)
        self._set(name, new)

    def swap(self, original: bool):
        """The original layers (``original=True``) or their replacements, for those done."""
        for name, pair in self.done.items():
            self._set(name, pair[0] if original else pair[1])

    def _set(self, name, module):
        for alias in self.aliases[name]:
            set_submodule(self.model, alias, module)


def _sequential_errors(weight, A, B, paired, stats):
    """Report errors of a sequentially fitted layer: against ``W X``, from perturbed inputs."""
    W = weight.detach().to(torch.float64)
    W_hat, W_svd = A @ B, _plain_svd(weight, A.shape[1])
    C = paired.original / max(paired.perturbed.n_tokens, 1)
    residual, energy, n_tokens = paired_errors(W, W_hat, paired)
    out = {
        "relative_error": float((W - W_hat).norm() / W.norm().clamp_min(1e-300)),
        "svd_relative_error": float((W - W_svd).norm() / W.norm().clamp_min(1e-300)),
        "output_error": (residual / max(energy, 1e-300)) ** 0.5,
        "svd_output_error": output_error(W, W_svd, C),
    }
    if stats is not None and stats.has("output_gradients"):
        G = stats.output_gradient_moment
        out["loss_estimate"] = 0.5 * paired_errors(W, W_hat, paired, G)[0] / n_tokens
        out["svd_loss_estimate"] = loss_estimate(W, W_svd, input_moment=C, output_gradient_moment=G)
    return out


def _untied_targets(model, target_modules, exclude_modules, filter_fn):
    names = find_targets(model, target_modules, exclude_modules, filter_fn=filter_fn)
    tied = _tied(model, names)
    if tied:
        warnings.warn(
            "Skipping layers whose weight is tied to another module's (factorising them "
            "would break the tie): " + "; ".join(f"{n} (tied to {', '.join(o)})" for n, o in tied),
            UserWarning,
            stacklevel=3,
        )
        names = [n for n in names if n not in {t for t, _ in tied}]
        if not names:
            raise ValueError("Every target layer is tied to another module: nothing to compress.")
    return names


def _check_sequential(sequential, method):
    if sequential and "inputs" not in get_method(method).needs:
        raise ValueError(
            f"sequential=True refits each layer to perturbed inputs; method {method!r} does "
            "not use the inputs (use 'svd-llm', 'kfac' or 'asvd')."
        )


def _method_for_batches(method, model, batches, loss_fn):
    """``"auto"`` with batches: the default when the batches define a loss, else inputs only.

    They define one with ``loss_fn``, with ``labels``, or as a causal LM's text.

    Returns the method and the batches, the first put back where reading it
    consumed it (a generator).
    """
    if method != "auto":
        return method, batches
    iterator = iter(batches)
    first = next(iterator, None)
    if iterator is batches and first is not None:
        batches = itertools.chain([first], iterator)
    labelled = with_text_labels(model, first)
    has_loss = loss_fn is not None or (isinstance(labelled, Mapping) and "labels" in labelled)
    return (DEFAULT_METHOD if has_loss else "svd-llm"), batches


def _resolve_method(method, statistics, provided=()):
    if method != "auto":
        spec = get_method(method)
        missing = [
            kind
            for kind in spec.needs
            if kind not in provided
            and (statistics is None or not all(s.has(kind) for s in statistics.values()))
        ]
        if missing:
            raise ValueError(
                f"method {method!r} needs {missing} statistics: collect them with "
                f"collect_statistics(model, batches, collect={list(spec.needs)!r}) and pass "
                "statistics=..."
            )
        return method
    for candidate in (DEFAULT_METHOD, "svd-llm", "tfwsvd", "svd"):
        needs = METHODS[candidate].needs
        if statistics is None and not needs:
            return candidate
        if statistics is not None and all(s.has(k) for s in statistics.values() for k in needs):
            return candidate
    return "svd"
