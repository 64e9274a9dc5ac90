"""What :func:`compress_model` reports: one row per layer, and the whole model's counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LayerReport:
    """What happened to one layer.

    ``rank`` is None for a layer left dense: factorising it would save less than
    ``min_saving``, or (``solver == "not reached"``) the calibration batches did not
    reach it. Errors compare the layer's weight ``W`` with its replacement
    ``W'``; the ``svd_`` fields are those of plain truncated SVD at the same rank
    (the layer's SVD risk). ``output_error`` is ``|(W - W') X| / |W X|`` on the
    calibration inputs ``X``; ``loss_estimate`` the predicted loss increase,
    ``0.5 tr(dW C dW^T G)`` with K-FAC's curvature when output gradients were
    collected, else ``0.5 sum F dW**2`` with the diagonal Fisher ``F``. Fields
    whose statistics were not collected are None.
    """

    name: str
    shape: tuple[int, int]
    rank: int | None
    params_before: int
    params_after: int
    method: str
    solver: str
    seconds: float
    relative_error: float = 0.0
    svd_relative_error: float = 0.0
    output_error: float | None = None
    svd_output_error: float | None = None
    loss_estimate: float | None = None
    svd_loss_estimate: float | None = None


@dataclass
class CompressionReport:
    """Per-layer report of :func:`compress_model`, with the whole model's parameter counts.

    ``to_dict()`` (JSON-ready), ``to_pandas()`` (one row per layer) and ``str()``
    (a table that fits 100 columns) are views of the same data.
    """

    layers: list[LayerReport] = field(default_factory=list)
    method: str = ""
    allocation: str = "uniform"
    sequential: bool | str = False  # False, or the mode: "refit" or "reweight"
    model_params_before: int = 0
    model_params_after: int = 0
    seconds: float = 0.0

    @property
    def params_before(self) -> int:
        """Weights of the target layers before compression."""
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        """Weights of the target layers after compression."""
        return sum(r.params_after for r in self.layers)

    def to_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.layers]

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "allocation": self.allocation,
            "sequential": self.sequential,
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "target_params_before": self.params_before,
            "target_params_after": self.params_after,
            "seconds": self.seconds,
            "layers": self.to_dicts(),
        }

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.to_dicts())

    def __str__(self) -> str:
        def num(x, width):
            return f"{'-' if x is None else format(x, '.3g'):>{width}}"

        head = (
            f"{'layer':<32} {'shape':>9} {'rank':>5} {'kept':>6} {'relerr':>6} {'outerr':>6} "
            f"{'(svd)':>6} {'loss':>8} {'(svd)':>8} {'s':>5}"
        )
        lines = [head, "-" * len(head)]
        for r in self.layers:
            name = r.name if len(r.name) <= 32 else "..." + r.name[-29:]
            shape = f"{r.shape[0]}x{r.shape[1]}"
            lines.append(
                f"{name:<32} {shape:>9} {'dense' if r.rank is None else r.rank:>5} "
                f"{r.params_after / r.params_before:>6.1%} {num(r.relative_error, 6)} "
                f"{num(r.output_error, 6)} {num(r.svd_output_error, 6)} "
                f"{num(r.loss_estimate, 8)} {num(r.svd_loss_estimate, 8)} {r.seconds:>5.1f}"
            )
        lines.append(
            "relerr |W-W'|/|W|; outerr |(W-W')X|/|WX| on the calibration inputs; loss: "
            "predicted loss"
        )
        lines.append("increase; (svd): plain SVD at the same rank; s: seconds")
        target = self.params_after / max(self.params_before, 1)
        model = self.model_params_after / max(self.model_params_before, 1)
        lines.append(
            f"method {self.method!r}; ranks: {self.allocation}"
            + (f"; fitted block by block ({self.sequential})" if self.sequential else "")
        )
        lines.append(
            f"target layers {self.params_before:,} -> {self.params_after:,} weights "
            f"({target:.1%} kept)"
        )
        unreached = sum(r.solver == "not reached" for r in self.layers)
        if unreached:
            lines.append(f"{unreached} of them not reached by the calibration batches: dense")
        lines.append(
            f"whole model {self.model_params_before:,} -> {self.model_params_after:,} "
            f"parameters ({model:.1%} kept), {self.seconds:.1f} s"
        )
        losses = [r.loss_estimate for r in self.layers if r.loss_estimate is not None]
        if losses:
            svd = sum(r.svd_loss_estimate for r in self.layers if r.svd_loss_estimate is not None)
            lines.append(f"predicted loss increase {sum(losses):.4g} (plain SVD: {svd:.4g})")
        return "\n".join(lines)
