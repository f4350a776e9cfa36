"""The front door: every option of a compile, as frozen dataclasses, and the named pass pipeline they select.

    opts = CompileOptions(quant=QuantOptions(calibration="percentile", bias_correction=True),
                          compress=CompressOptions(prune=0.8), emit=EmitOptions(prefix="kws"))
    result = codegen.compile(model, example, calib, options=opts)
    print(codegen.pipeline(opts))        # the passes these options run, by name

`qgen compile` builds one CompileOptions from its flags (cli.compile_options; tests/test_options.py checks
that every flag maps to a field and every field to a flag or to the API-only list). The options are recorded
in report.json ("options"), in qgen_graph.json and on CompileResult.options.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PassFn = Callable[[Any], Any]


@dataclass(frozen=True)
class QuantOptions:
    calibration: str = "minmax"  # "minmax" | "percentile" | "mse" | "kl"
    percentile: float = 99.99  # for calibration="percentile"
    bias_correction: bool = False  # subtract each channel's mean quantisation error from its bias
    equalize: bool = False  # cross-layer equalisation by powers of two
    precision: dict[str, int] = field(default_factory=dict)  # {layer name: 8 | 16}: int16 output activations
    auto_precision: float | None = None  # bound on the accuracy drop (points): raise layers to int16 until met
    recurrent_state: int = 16  # 8 | 16: the hidden state of every GRU/LSTM/RNN layer (16: int16 Q15; 8: its output)
    weights: str = "int8"  # "int8" | "int4": every conv2d/depthwise/linear layer's weights (precision overrides)


@dataclass(frozen=True)
class CompressOptions:
    prune: float | None = None  # unstructured sparsity, 0 <= s < 1
    prune_scope: str = "layer"  # "layer" | "global"
    importance: str = "magnitude"  # "magnitude" | "gradient" (|w * dL/dw|, needs training data)
    prune_layers: tuple[str, ...] | None = None  # None: every conv2d / linear
    channels: float | None = None  # fraction of channels removed, 0 <= r < 1
    channel_criterion: str = "l1"  # "l1" | "l2" | "bn" (BatchNorm |gamma|, needs the torch model)
    rank_energy: float | None = None  # low-rank: energy kept (0, 1]
    rank: int | None = None  # low-rank: explicit rank >= 1
    cluster: int | None = None  # weight sharing: bits per weight (2..6 useful)
    finetune_epochs: int = 0  # after each structural / pruning step, when training data is given
    prune_steps: int = 1  # gradual pruning: sparsity reached in this many prune + fine-tune rounds
    lr: float = 3e-3
    batch: int = 64
    seed: int = 0

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.prune, self.channels, self.rank_energy, self.rank, self.cluster))


@dataclass(frozen=True)
class EmitOptions:
    prefix: str = "model"  # C symbol prefix (a lowercase C identifier)
    arena_argument: bool = False  # <prefix>_run(in, out, arena): the caller owns the arena (reentrant)
    stream: bool = False  # <prefix>_step(frame, out) + <prefix>_reset(): one frame at a time (passes/stream.py)


@dataclass(frozen=True)
class LimitOptions:
    max_flash: int | None = None  # bytes; default: `board`'s, else the largest known board's
    max_ram: int | None = None
    board: str | None = None  # a name in boards/*.toml


@dataclass(frozen=True)
class CompileOptions:
    quant: QuantOptions = field(default_factory=QuantOptions)
    compress: CompressOptions = field(default_factory=CompressOptions)
    emit: EmitOptions = field(default_factory=EmitOptions)
    limits: LimitOptions = field(default_factory=LimitOptions)

    def to_dict(self) -> dict:
        """JSON-ready and canonical (dict keys sorted), as recorded in report.json and qgen_graph.json."""
        def canon(v):
            if isinstance(v, dict):
                return {k: canon(v[k]) for k in sorted(v)}
            if isinstance(v, (list, tuple)):
                return [canon(x) for x in v]
            return v
        return canon(asdict(self))

    @classmethod
    def from_dict(cls, doc: dict) -> CompileOptions:
        groups = {f.name: f.default_factory for f in fields(cls)}  # type: ignore[misc]
        made = {}
        for name, factory in groups.items():
            sub = dict(doc.get(name, {}))
            if name == "compress" and sub.get("prune_layers") is not None:
                sub["prune_layers"] = tuple(sub["prune_layers"])
            made[name] = factory(**sub)
        return cls(**made)


@dataclass(frozen=True)
class Pass:
    name: str
    fn: PassFn

    def __iter__(self):  # unpacks as the (name, fn) pairs run_pipeline takes
        return iter((self.name, self.fn))

    def __repr__(self) -> str:
        return self.name


class Pipeline(list):
    """A list of Pass that prints as its pass names, in order."""

    def __str__(self) -> str:
        return " -> ".join(p.name for p in self)

    __repr__ = __str__

    @property
    def names(self) -> list[str]:
        return [p.name for p in self]
