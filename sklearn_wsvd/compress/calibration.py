"""One calibration pass: per-layer input, gradient and curvature statistics, gathered by hooks.

Like torch.ao.quantization's observers, an object per layer accumulates float64
sums and their counts, so that statistics from different batches, processes or
workers add up with :meth:`LayerStatistics.merge`. Layers that read the same
input tensor (the query, key and value projections of an attention block) share
one :class:`InputStatistics`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ._targets import find_targets
from .layers import is_conv1d, linear_shape

KINDS = ("inputs", "fisher", "output_gradients")


@dataclass(eq=False)
class InputStatistics:
    """Sums over the tokens a layer read: ``x x^T`` and ``|x|`` (float64), and their count."""

    gram: torch.Tensor
    abs_sum: torch.Tensor
    n_tokens: int = 0

    @classmethod
    def empty(cls, n: int, device) -> InputStatistics:
        zeros = torch.zeros((n, n), dtype=torch.float64, device=device)
        return cls(zeros, torch.zeros(n, dtype=torch.float64, device=device))

    def update(self, x: torch.Tensor) -> None:
        """Add the tokens ``x`` (tokens x features): each batch's product in float32, summed
        in float64 (the drift of long float32 sums is what breaks SVD-LLM's Cholesky)."""
        x = x.detach().float()
        self.gram += (x.T @ x).double()
        self.abs_sum += x.abs().sum(0).double()
        self.n_tokens += x.shape[0]

    @property
    def second_moment(self) -> torch.Tensor:
        """``E[x x^T]`` over the tokens: the Gram matrix whose metric gives the output error."""
        return self.gram / max(self.n_tokens, 1)

    @property
    def mean_abs(self) -> torch.Tensor:
        """``E|x_j|`` per input channel (ASVD's scaling)."""
        return self.abs_sum / max(self.n_tokens, 1)

    def merge(self, other: InputStatistics) -> InputStatistics:
        return InputStatistics(
            self.gram + other.gram, self.abs_sum + other.abs_sum, self.n_tokens + other.n_tokens
        )


@dataclass(eq=False)
class LayerStatistics:
    """What one calibration pass knows about a linear layer (weights in (out, in) orientation).

    Attributes
    ----------
    shape : tuple of int
        ``(out_features, in_features)``.
    inputs : InputStatistics or None
        Input sums (shared with the layers that read the same tensor).
    fisher_sum : torch.Tensor or None
        Sum of the squared gradients of the loss w.r.t. the weight, (out, in).
    output_gradient_gram : torch.Tensor or None
        Sum over tokens of ``g g^T``, ``g`` the gradient of the loss w.r.t. the
        layer's output, (out, out).
    n_losses : int
        Number of losses differentiated (batches, or samples with ``per_sample``).
    """

    shape: tuple[int, int]
    inputs: InputStatistics | None = None
    fisher_sum: torch.Tensor | None = None
    output_gradient_gram: torch.Tensor | None = None
    n_losses: int = 0

    @property
    def input_second_moment(self) -> torch.Tensor:
        return self._need("inputs", self.inputs).second_moment

    @property
    def input_mean_abs(self) -> torch.Tensor:
        return self._need("inputs", self.inputs).mean_abs

    @property
    def fisher(self) -> torch.Tensor:
        """Diagonal empirical Fisher: the mean squared gradient of each weight."""
        return self._need("fisher", self.fisher_sum) / max(self.n_losses, 1)

    @property
    def output_gradient_moment(self) -> torch.Tensor:
        """``G``: mean over losses of the sum over tokens of ``g g^T`` (K-FAC's output factor).

        With the input second moment ``C``, ``C (x) G`` approximates the Fisher
        information of the weight, and ``0.5 tr(dW C dW^T G)`` the loss increase
        of a change ``dW``.
        """
        return self._need("output_gradients", self.output_gradient_gram) / max(self.n_losses, 1)

    def has(self, kind: str) -> bool:
        """Whether statistics of ``kind`` were collected."""
        return self._sums(kind) is not None

    def holds(self, kind: str) -> bool:
        """Whether statistics of ``kind`` were collected and are not all zero: the batches
        ran the layer (inputs), and its output reaches the loss (gradients)."""
        sums = self._sums(kind)
        return sums is not None and bool(sums.any())

    def _sums(self, kind):
        return {
            "inputs": None if self.inputs is None else self.inputs.gram,
            "fisher": self.fisher_sum,
            "output_gradients": self.output_gradient_gram,
        }[kind]

    def _need(self, kind, value):
        if value is None:
            raise ValueError(
                f"these statistics hold no {kind!r}: collect them with "
                f"collect_statistics(..., collect=[..., {kind!r}])."
            )
        return value

    def merge(self, other: LayerStatistics) -> LayerStatistics:
        """Statistics of both passes together (sums and counts add)."""
        if self.shape != other.shape:
            raise ValueError(f"cannot merge statistics of shapes {self.shape} and {other.shape}.")

        def add(a, b):
            return None if a is None or b is None else a + b

        inputs = None
        if self.inputs is not None and other.inputs is not None:
            inputs = self.inputs.merge(other.inputs)
        return LayerStatistics(
            self.shape,
            inputs,
            add(self.fisher_sum, other.fisher_sum),
            add(self.output_gradient_gram, other.output_gradient_gram),
            self.n_losses + other.n_losses,
        )


def merge_statistics(first: Mapping, second: Mapping) -> dict[str, LayerStatistics]:
    """Merge two :func:`collect_statistics` results layer by layer, keeping shared inputs shared."""
    if set(first) != set(second):
        raise ValueError(
            f"the two statistics cover different layers: {sorted(set(first) ^ set(second))}."
        )
    merged_inputs = {}
    out = {}
    for name, a in first.items():
        b = second[name]
        out[name] = a.merge(b)
        if a.inputs is not None and b.inputs is not None:
            key = (id(a.inputs), id(b.inputs))
            out[name].inputs = merged_inputs.setdefault(key, out[name].inputs)
    return out


def statistics_from_importance(importance, shapes) -> dict[str, LayerStatistics]:
    """Wrap a dict of diagonal-Fisher arrays (``fisher_importance``'s output) as statistics."""
    missing = [n for n in shapes if n not in importance]
    if missing:
        raise ValueError(f"importance has no entry for the target layers {missing}.")
    out = {}
    for name, shape in shapes.items():
        F = torch.as_tensor(importance[name]).detach().to(torch.float64)
        if tuple(F.shape) != tuple(shape):
            raise ValueError(
                f"importance[{name!r}] has shape {tuple(F.shape)}, but the layer's weight is "
                f"{tuple(shape)} (out_features, in_features)."
            )
        if not torch.isfinite(F).all():
            raise ValueError(f"importance[{name!r}] contains NaN or infinite values.")
        if (F < 0).any():
            raise ValueError(
                f"importance[{name!r}] must be non-negative; its smallest entry is "
                f"{float(F.min()):g}."
            )
        out[name] = LayerStatistics(tuple(shape), fisher_sum=F, n_losses=1)
    return out


def to_device(value, device):
    """``value`` (a tensor, or a dict, tuple or list of them) with its tensors on ``device``."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def input_device(model) -> torch.device | None:
    """Where a model takes its inputs: the device of its first weight (accelerate's hooks
    move them on between the parts of a model split over devices)."""
    param = next(model.parameters(), None)
    return None if param is None else param.device


def _forward(model, batch, loss_fn):
    """Run the model on a batch, moved to its device; return the loss when one is
    defined (else None)."""
    batch = to_device(batch, input_device(model))
    if loss_fn is not None:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("with loss_fn, each batch must be an (inputs, targets) pair.")
        inputs, targets = batch
        return loss_fn(model(inputs), targets)
    if isinstance(batch, Mapping):
        out = model(**batch)
    elif isinstance(batch, torch.Tensor):  # one input (token ids, say)
        out = model(batch)
    else:
        out = model(*batch)
    return getattr(out, "loss", None)


def is_causal_lm_class(name: str) -> bool:
    """Whether ``name`` is a transformers causal language model class (``*ForCausalLM``,
    or one that ``AutoModelForCausalLM`` builds, such as ``GPT2LMHeadModel``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return name.endswith("ForCausalLM") or any(
        name == value or (isinstance(value, tuple) and name in value)
        for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    )


def is_causal_lm(model) -> bool:
    """Whether ``model`` is a transformers causal language model.

    Its text is its own labels: the loss is the next-token loss of the batch.
    A ``torch.compile`` wrapper of one is one.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    transformers = sys.modules.get("transformers")  # a transformers model has imported it
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return False
    return is_causal_lm_class(type(model).__name__)


def token_batch(batch):
    """A tensor of token ids as the batch it stands for, ``{"input_ids": ids}``; any other
    batch as it is."""
    if isinstance(batch, torch.Tensor) and not batch.is_floating_point():
        return {"input_ids": batch}
    return batch


def with_text_labels(model, batch):
    """A causal LM's batch of text (``input_ids``, no ``labels``) with its tokens as labels.

    Padding (``attention_mask == 0``) gets the label -100, which the loss skips, as
    transformers' language-modelling collator does. A bare tensor of token ids is
    such a batch too (:func:`token_batch`). Other batches are returned as they are.
    """
    if not is_causal_lm(model):
        return batch
    batch = token_batch(batch)
    if not (isinstance(batch, Mapping) and "input_ids" in batch and "labels" not in batch):
        return batch
    labels = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is not None:
        labels = labels.masked_fill(mask == 0, -100)
    return {**batch, "labels": labels}


def _token_mask(batch):
    """The attention mask of a Hugging Face batch (padding excluded), flattened; else None."""
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        return batch["attention_mask"].reshape(-1).bool()
    return None


def _rows(t: torch.Tensor, width: int, mask):
    """The tokens of ``t`` (..., width) as rows, without padding when ``mask`` matches."""
    rows = t.reshape(-1, width)
    if mask is not None and mask.numel() == rows.shape[0]:
        rows = rows[mask.to(rows.device)]
    return rows


def _split(batch):
    """The samples of a batch, one at a time, each still a batch of one."""
    if isinstance(batch, Mapping):
        n = len(next(iter(batch.values())))
        return ({k: v[i : i + 1] for k, v in batch.items()} for i in range(n))
    if isinstance(batch, torch.Tensor):
        return (batch[i : i + 1] for i in range(len(batch)))
    n = len(batch[0])
    return (tuple(t[i : i + 1] for t in batch) for i in range(n))


def collect_statistics(
    model: nn.Module,
    batches: Iterable,
    *,
    collect=("inputs",),
    loss_fn: Callable | None = None,
    target_modules=None,
    exclude_modules=None,
    per_sample: bool = False,
    progress: bool = False,
) -> dict[str, LayerStatistics]:
    """Run ``model`` over calibration batches and gather what every compression method needs.

    For each targeted linear layer (``nn.Linear`` or GPT-2's ``Conv1D``), by
    forward and backward hooks, in one pass:

    - ``"inputs"``: the second moment of the layer's inputs ``E[x x^T]`` and
      their mean magnitude per channel. Needs no labels: unlabelled text works.
      Padding tokens (``attention_mask == 0`` in a Hugging Face batch) are left
      out; layers that read the same tensor share one matrix.
    - ``"fisher"``: the diagonal empirical Fisher, the mean squared gradient of
      the loss w.r.t. each weight (FWSVD, TFWSVD). Needs a loss: ``labels`` in
      the batches, or text for a transformers causal language model (its
      ``input_ids``, padding excluded, are its labels when the batch has none).
    - ``"output_gradients"``: ``G``, the second moment of the gradient of the
      loss w.r.t. the layer's output, summed over tokens (K-FAC). Needs a loss.

    Sums are float64. Dropout is off during the pass; the model's training mode,
    ``requires_grad`` flags and existing gradients are restored, and the hooks
    removed, even when a batch fails. Memory: the statistics themselves, plus one
    batch's activations (and, for a Fisher, the targeted weights' gradients: without
    one, the backward pass computes no weight's gradient).

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (batches are dicts; with ``labels`` its output's
        ``.loss`` is the loss, and a ``*ForCausalLM`` model's text is its own
        labels) or any module (with ``loss_fn`` for a loss).
    batches : iterable
        Dicts of tensors, or ``(inputs, targets)`` pairs when ``loss_fn`` is given,
        or tuples of positional inputs, or single tensors (a causal LM's token ids
        are then its ``input_ids``, as in a dict). Each is moved to the device of
        the model's first weight.
    collect : sequence of {"inputs", "fisher", "output_gradients"}, default=("inputs",)
        What to gather.
    loss_fn : callable, optional
        ``loss_fn(model(inputs), targets)`` for ``(inputs, targets)`` batches.
    target_modules, exclude_modules : str, list of str or None
        Layers to observe, as in :func:`compress_model`.
    per_sample : bool, default=False
        Differentiate each sample's loss on its own: the faithful diagonal Fisher
        (per-batch squared gradients are biased towards zero), one backward pass
        per sample.
    progress : bool, default=False
        Show a progress bar over the batches.

    Returns
    -------
    statistics : dict of str to LayerStatistics
        In the order of the model's modules.

    Examples
    --------
    >>> import torch
    >>> from sklearn_wsvd.compress import collect_statistics
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> x = torch.randn(16, 4)
    >>> stats = collect_statistics(model, [(x,)])
    >>> stats["0"].inputs.n_tokens, tuple(stats["0"].input_second_moment.shape)
    (16, (4, 4))
    >>> bool(torch.allclose(stats["0"].input_second_moment, (x.T @ x).double() / 16))
    True
    """
    collect = tuple(collect)
    unknown = sorted(set(collect) - set(KINDS))
    if unknown or not collect:
        raise ValueError(f"collect must name some of {KINDS}, got {collect!r}.")
    needs_loss = "fisher" in collect or "output_gradients" in collect
    names = find_targets(model, target_modules, exclude_modules)
    modules = dict(model.named_modules())
    stats = {name: LayerStatistics(linear_shape(modules[name])) for name in names}
    params = [modules[name].weight for name in names]
    # Each layer's statistics live where its weight does (a model split over devices).
    devices = {name: modules[name].weight.device for name in names}
    if "fisher" in collect:
        for name in names:
            stats[name].fisher_sum = torch.zeros(
                stats[name].shape, dtype=torch.float64, device=devices[name]
            )
    if "output_gradients" in collect:
        for name in names:
            out = stats[name].shape[0]
            stats[name].output_gradient_gram = torch.zeros(
                (out, out), dtype=torch.float64, device=devices[name]
            )
    # Without a Fisher no weight's gradient is needed, only the outputs': no weight then
    # requires one, and the inputs of the first layers the data reach become leaves that
    # do (one per input tensor, shared by the layers that read it), from which the
    # backward pass reaches every later layer's output, computing no weight gradient.
    leaves_only = needs_loss and "fisher" not in collect
    state = {"mask": None, "seen": {}, "leaves": {}}
    reached = set()

    def as_leaf(module, args):
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()) or x.grad_fn is not None:
            return None  # not data, or downstream of a leaf already
        if id(x) not in state["leaves"]:
            state["leaves"][id(x)] = (x, x.detach().requires_grad_(True))  # x kept: ids unique
        return (state["leaves"][id(x)][1], *args[1:])

    def observe(name):
        st = stats[name]
        out_features, in_features = st.shape
        device = devices[name]

        def hook(module, args, output):
            mask = state["mask"]
            if "inputs" in collect:
                x = args[0]
                shared = state["seen"].get(id(x))
                if shared is not None and st.inputs in (None, shared[1]):
                    st.inputs = shared[1]  # already counted in this pass
                else:
                    if st.inputs is None:
                        st.inputs = InputStatistics.empty(in_features, device)
                    st.inputs.update(_rows(x, in_features, mask))
                    state["seen"][id(x)] = (x, st.inputs)  # kept alive: ids stay unique
            if st.output_gradient_gram is not None and output.requires_grad:

                def grad_hook(g):
                    reached.add(name)
                    g = _rows(g.detach(), out_features, mask).float()
                    st.output_gradient_gram += (g.T @ g).double()

                output.register_hook(grad_hook)

        return hook

    was_training = model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    saved_grads = {p: p.grad for p in model.parameters()}
    handles = [modules[name].register_forward_hook(observe(name)) for name in names]
    if leaves_only:
        handles += [modules[name].register_forward_pre_hook(as_leaf) for name in names]
    n_batches = 0
    try:
        model.eval()
        if needs_loss:
            for p in model.parameters():
                p.requires_grad_(False)
                p.grad = None
            for p in [] if leaves_only else params:
                p.requires_grad_(True)
        for batch in tqdm(batches, desc="calibrate", disable=not progress, leave=False):
            n_batches += 1
            if needs_loss and loss_fn is None:
                batch = with_text_labels(model, batch)
            for sample in _split(batch) if per_sample and needs_loss else (batch,):
                state.update(mask=_token_mask(sample), seen={}, leaves={})
                if not needs_loss:
                    with torch.no_grad():
                        _forward(model, sample, loss_fn)
                    continue
                loss = _checked_loss(_forward(model, sample, loss_fn))
                if leaves_only:  # the outputs' hooks take their gradients on the way
                    leaves = [leaf for _, leaf in state["leaves"].values()]
                    torch.autograd.grad(loss, leaves, allow_unused=True)
                    for name in names:
                        stats[name].n_losses += 1
                    continue
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for name, g in zip(names, grads, strict=True):
                    st = stats[name]
                    st.n_losses += 1
                    if g is None:
                        continue
                    reached.add(name)
                    if st.fisher_sum is not None:
                        g = g.detach().T if is_conv1d(modules[name]) else g.detach()
                        st.fisher_sum += g.double().square()
    finally:
        for handle in handles:
            handle.remove()
        state.update(seen={}, mask=None, leaves={})
        model.train(was_training)
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = saved_grads[p]
    if n_batches == 0:
        raise ValueError("batches is empty: nothing was calibrated.")
    unused = [name for name in names if "inputs" in collect and stats[name].inputs is None]
    if unused:
        warnings.warn(
            f"The forward passes never ran the layers {unused}: they have no input "
            "statistics. Exclude them (exclude_modules=...).",
            UserWarning,
            stacklevel=2,
        )
    unreached = [name for name in names if name not in reached and name not in unused]
    if needs_loss and unreached:
        warnings.warn(
            f"The loss does not depend on the layers {unreached}: their gradient statistics "
            "are zero. Exclude them, or use a method that needs only inputs.",
            UserWarning,
            stacklevel=2,
        )
    return stats


def _checked_loss(loss):
    if loss is None:
        raise ValueError(
            "The model's output has no .loss: pass labels in the batch (Hugging Face "
            "models) or a loss_fn(output, target) with (inputs, targets) batches."
        )
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"the loss must be a scalar tensor, got {shape}; reduce it (mean).")
    if not loss.requires_grad:
        raise NoLossGradientError(
            "the loss does not depend on any target layer's weight (it has no gradient): "
            "was it computed under torch.no_grad(), or detached?"
        )
    return loss


class NoLossGradientError(ValueError):
    """The calibration loss depends on none of the target layers."""
