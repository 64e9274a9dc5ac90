"""Sequential calibration: each block is fitted to the inputs that the compressed blocks give it.

Compressing layer by layer from statistics of the original model ignores that
every layer downstream of a compressed one sees perturbed inputs ``X~`` instead
of ``X``. Fitting block by block, as GPTQ and SVD-LLM's update do, lets later
layers correct earlier errors: a layer's replacement minimises
``|W X - W' X~|`` (through the metrics of the method), whose solution is the
method applied to the least-squares target ``W* = W M C~^{-1}`` in the metric
``C~`` of the perturbed inputs (``M = sum x x~^T``), because
``|W X - W' X~|^2 = |W X - W* X~|^2 + |(W* - W') C~^{1/2}|^2``.
"""

from __future__ import annotations

import torch
from torch import nn

from .calibration import (
    InputStatistics,
    LayerStatistics,
    _forward,
    _rows,
    _token_mask,
    input_device,
    to_device,
)
from .layers import linear_shape


class _StageDone(Exception):
    """Raised by a hook once every layer of the stage has seen its input: the rest is not needed."""


def stages(model: nn.Module, names: list[str]) -> list[list[str]]:
    """Target layers grouped by block (an element of the outermost ``nn.ModuleList``), in order.

    Layers outside any ``nn.ModuleList`` (a pooler, say) form a stage each. Stages
    come in the order of the model's modules, which for transformer stacks is the
    order of the forward pass.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        key = ".".join(name.split(".")[: _block_depth(model, name)])
        groups.setdefault(key, []).append(name)
    return list(groups.values())


class PairedInputs:
    """Sums over the calibration tokens of ``x x^T``, ``x x~^T`` and ``x~ x~^T`` for one layer."""

    def __init__(self, n: int, device):
        def zeros():
            return torch.zeros((n, n), dtype=torch.float64, device=device)

        self.original, self.cross = zeros(), zeros()
        self.perturbed = InputStatistics.empty(n, device)

    def add(self, x, x_tilde):
        x, x_tilde = x.float(), x_tilde.float()
        self.original += (x.T @ x).double()
        self.cross += (x.T @ x_tilde).double()
        self.perturbed.update(x_tilde)


def paired_inputs(model, stage, swap, batches, loss_fn=None) -> dict[str, PairedInputs]:
    """Run every batch through the original and the compressed model up to ``stage``.

    ``swap(original: bool)`` puts the original or the compressed version of the
    layers done so far into the model. Each pass stops as soon as every layer of
    the stage has read its input.
    """
    modules = dict(model.named_modules())
    sums: dict[str, PairedInputs] = {}
    captured: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    state = {"original": True, "mask": None}

    def observe(name):
        in_features = linear_shape(modules[name])[1]

        def hook(module, args):
            rows = _rows(args[0].detach(), in_features, state["mask"])
            if state["original"]:
                captured.setdefault(name, rows)
                fired = captured
            else:
                if name not in done and name in captured:
                    if name not in sums:
                        sums[name] = PairedInputs(in_features, rows.device)
                    sums[name].add(captured[name], rows)
                    done.add(name)
                fired = done
            if all(n in fired for n in stage):
                raise _StageDone

        return hook

    handles = [modules[name].register_forward_pre_hook(observe(name)) for name in stage]
    try:
        with torch.no_grad():
            for batch in batches:
                captured.clear()
                done.clear()
                state["mask"] = _token_mask(batch)
                for original in (True, False):
                    state["original"] = original
                    swap(original)
                    try:
                        _run(model, batch, loss_fn)
                    except _StageDone:
                        pass
    finally:
        for handle in handles:
            handle.remove()
        swap(False)
    missing = [name for name in stage if name not in sums]
    if missing:
        raise ValueError(f"the calibration batches never ran the layers {missing}.")
    return sums


class BlockRunner:
    """Runs a transformer stack block by block on cached hidden states, as GPTQ does.

    The inputs (positional and keyword: attention mask, rotary embeddings...) of
    every block are captured once per batch, in one pass of the original model:
    each block has its own (a sliding-window
    layer's mask, T5's position bias passed on from the first block). From then
    on only the block at hand runs, on the hidden states of the original and of
    the compressed model, so sequential calibration costs about four forward
    passes in all instead of one per block. Only for stages that are
    consecutive elements of one ``nn.ModuleList``, starting with its first;
    other stages use full passes.
    """

    def __init__(self, model, blocks, batches, loss_fn):
        self.blocks = blocks  # name -> module, in order
        self.index = {name: i for i, name in enumerate(blocks)}
        self.original = []  # per batch: the first block's hidden states (args[0])
        self.inputs = []  # per batch, per block: its other arguments (args[1:], kwargs)
        self._next_original = []
        order = []  # per batch: the blocks in the order they ran

        def capture(i):
            def hook(module, args, kwargs):
                if i == 0:  # later blocks' hidden states are recomputed: not kept
                    self.original.append(args[0])
                self.inputs[-1].append((_without_cache(args[1:]), _without_cache(kwargs)))
                order[-1].append(i)

            return hook

        handles = [
            block.register_forward_pre_hook(capture(i), with_kwargs=True)
            for i, block in enumerate(blocks.values())
        ]
        try:
            with torch.no_grad():
                for batch in batches:
                    self.inputs.append([])
                    order.append([])
                    _run(model, batch, loss_fn)
        finally:
            for handle in handles:
                handle.remove()
        if any(o != list(range(len(blocks))) for o in order):
            # a block run twice (ALBERT's shared layers) or skipped (LayerDrop): the
            # caller uses full passes
            raise _NotSequential
        self.masks = [_token_mask(batch) for batch in batches]
        self.compressed = list(self.original)

    def _arguments(self, block_name):
        """Per batch, the block's own inputs other than the hidden states."""
        i = self.index[block_name]
        return [inputs[i] for inputs in self.inputs]

    @classmethod
    def create(cls, model, groups, batches, loss_fn):
        """A runner when the groups start with consecutive blocks of one stack, else None."""
        names = [".".join(g[0].split(".")[: _block_depth(model, g[0])]) for g in groups]
        parent, index = names[0].rpartition(".")[0], names[0].rpartition(".")[2]
        if not parent or index != "0":
            return None
        stack = model.get_submodule(parent)
        blocks = {}
        for name in names:
            if name.rpartition(".")[0] != parent or name.rpartition(".")[2] != str(len(blocks)):
                break
            blocks[name] = stack[len(blocks)]
        try:
            return cls(model, blocks, batches, loss_fn)
        except _NotSequential:
            return None

    def block_of(self, stage):
        """The name of the block holding ``stage``, when this runner runs it, else None."""
        name = stage[0]
        for block in self.blocks:
            if name.startswith(block + "."):
                return block
        return None

    def paired_inputs(self, block_name, stage) -> dict[str, PairedInputs]:
        """Run the block on both streams, pairing the inputs its stage layers read."""
        block = self.blocks[block_name]
        modules = dict(block.named_modules())
        local = {name: name[len(block_name) + 1 :] for name in stage}
        sums: dict[str, PairedInputs] = {}
        captured: dict[str, torch.Tensor] = {}
        state = {"original": True, "mask": None}

        def observe(name):
            in_features = linear_shape(modules[local[name]])[1]

            def hook(module, args):
                rows = _rows(args[0].detach(), in_features, state["mask"])
                if state["original"]:
                    captured.setdefault(name, rows)
                elif name in captured and name not in done:
                    if name not in sums:
                        sums[name] = PairedInputs(in_features, rows.device)
                    sums[name].add(captured[name], rows)
                    done.add(name)

            return hook

        handles = [modules[local[n]].register_forward_pre_hook(observe(n)) for n in stage]
        done: set[str] = set()
        self._next_original = []
        try:
            with torch.no_grad():
                for i, (args, kwargs) in enumerate(self._arguments(block_name)):
                    captured.clear()
                    done.clear()
                    state["mask"] = self.masks[i]
                    state["original"] = True
                    out = block(self.original[i], *args, **kwargs)
                    self._next_original.append(_hidden(out))
                    state["original"] = False
                    block(self.compressed[i], *args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in stage if name not in sums]
        if missing:
            raise ValueError(f"the calibration batches never ran the layers {missing}.")
        return sums

    def advance(self, block_name):
        """After the block's layers are replaced: both streams move past it."""
        block = self.blocks[block_name]
        with torch.no_grad():
            self.compressed = [
                _hidden(block(h, *args, **kwargs))
                for h, (args, kwargs) in zip(
                    self.compressed, self._arguments(block_name), strict=True
                )
            ]
        self.original, self._next_original = self._next_original, []


class _NotSequential(Exception):
    """The stack's blocks did not each run once, in order, in a forward pass."""


def _without_cache(arguments):
    """``arguments`` (a tuple or a dict) with any key-value cache replaced by None.

    A cache object (transformers' ``Cache``: it has ``get_seq_length``) captured with
    a block's inputs would grow each time the block runs again, and the stream's
    attention would see the keys of earlier runs.
    """
    if isinstance(arguments, dict):
        return {
            k: (False if k == "use_cache" else None if hasattr(v, "get_seq_length") else v)
            for k, v in arguments.items()
        }
    return tuple(None if hasattr(a, "get_seq_length") else a for a in arguments)


def _block_depth(model, name):
    """Number of name parts of the block (outermost ``nn.ModuleList`` element) holding ``name``."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), nn.ModuleList):
            return i + 1
    return len(parts)


def _hidden(out):
    """The hidden states a block returns (alone, or first of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _run(model, batch, loss_fn):
    """The forward pass of a calibration batch without a key-value cache (a cache
    object shared by the blocks would grow at every rerun). Labels stay: an
    encoder-decoder model (T5) builds its decoder's inputs from them."""
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache:
        config.use_cache = False
    try:
        if loss_fn is not None:  # the inputs alone: the blocks' hooks need no loss
            model(to_device(batch[0], input_device(model)))
        else:
            _forward(model, batch, None)
    finally:
        if use_cache:
            config.use_cache = use_cache


def corrected(weight, paired: PairedInputs, damping: float):
    """The least-squares target ``W*`` for perturbed inputs, and its statistics.

    ``W* = (W M + lam W)(C~ + lam I)^{-1}``: the ridge pulls towards ``W`` itself
    in directions the perturbed inputs barely reach, so ``W* = W`` whenever
    ``X~ = X``. ``lam`` is ``damping`` times the mean eigenvalue of ``C~``.
    """
    W = weight.detach().to(torch.float64)
    C_tilde = paired.perturbed.gram
    n = C_tilde.shape[0]
    lam = damping * float(C_tilde.diagonal().mean()) + torch.finfo(torch.float64).tiny
    system = C_tilde + lam * torch.eye(n, dtype=C_tilde.dtype, device=C_tilde.device)
    rhs = W @ paired.cross + lam * W
    target = torch.linalg.solve(system, rhs.T).T  # system is symmetric
    return target


def paired_errors(W, W_hat, paired: PairedInputs, G=None):
    """Output error ``|W X - W' X~| / |W X|`` and, with ``G``, the K-FAC loss estimate."""
    W, W_hat = W.to(torch.float64), W_hat.to(torch.float64)
    C, M, C_tilde = paired.original, paired.cross, paired.perturbed.gram
    n_tokens = max(paired.perturbed.n_tokens, 1)
    if G is None:
        G = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
    energy = ((G @ W @ C) * W).sum()
    residual = energy - 2 * ((G @ W @ M) * W_hat).sum() + ((G @ W_hat @ C_tilde) * W_hat).sum()
    return float(residual.clamp_min(0)), float(energy), n_tokens


def layer_statistics(stats: LayerStatistics | None, paired: PairedInputs, shape):
    """The method's statistics with the inputs replaced by the perturbed ones."""
    if stats is None:
        return LayerStatistics(tuple(shape), paired.perturbed)
    return LayerStatistics(
        stats.shape,
        paired.perturbed,
        stats.fisher_sum,
        stats.output_gradient_gram,
        stats.n_losses,
    )
