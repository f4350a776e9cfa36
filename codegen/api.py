"""The Python API: `codegen.compile(model, example_input, calib_data, ...)` -> CompileResult.

The CLI is a thin wrapper over this module.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import driver, progress, serialize
from . import limits as limits_mod
from .driver import VERIFY_SAMPLES_SAVED, Context  # noqa: F401 (VERIFY_SAMPLES_SAVED re-exported)
from .emit.c import check_prefix
from .errors import UserError
from .fixed import dequantize
from .hostcheck import HostModel, VerifyResult
from .hostcheck import verify as host_verify
from .ir import Graph
from .options import CompileOptions
from .output import option_text, write_atomic
from .passes import run_pipeline
from .reference import quantize_input, run_int, to_torch_layout


def as_array(data: Any) -> np.ndarray:
    """A NumPy array from an array, a list or a torch tensor (detached: a tensor that requires grad is fine)."""
    if hasattr(data, "detach") and hasattr(data, "cpu"):
        data = data.detach().cpu().numpy()
    return np.asarray(data)


def torch_input_shape(graph: Graph) -> tuple[int, ...]:
    """One input sample's shape in PyTorch layout: (C, H, W), (C, L) or (F,)."""
    shape = graph.tensors[graph.inputs[0]].shape
    layout = graph.io_layout.get(graph.inputs[0], "nchw" if len(shape) == 3 else "nf")
    if layout == "nchw":
        return (shape[2], shape[0], shape[1])
    if layout == "ncl":
        return (shape[2], shape[1])
    if layout == "nlc":  # a time-major sequence (a recurrent model's input): PyTorch (L, C) = IR (1, L, C)
        return (shape[1], shape[2])
    return tuple(shape)


def float_batch(graph: Graph, data: Any, what: str) -> np.ndarray:
    """Validate float samples in PyTorch layout: (N, *sample shape), or one sample (the batch axis is added).

    Raises UserError naming `what` for a wrong dtype, shape, an empty batch or NaN/Inf values."""
    x = as_array(data)
    sample = torch_input_shape(graph)
    if x.dtype.kind not in "fiu":
        raise UserError(f"{what} has dtype {x.dtype}; give float samples")
    if x.shape == sample:
        x = x[None]  # a single sample
    if x.shape[1:] != sample:
        raise UserError(f"{what} has shape {list(x.shape)}; the model input is {list(sample)} per sample, so give "
                        f"an array of shape [N, {', '.join(map(str, sample))}] (or one sample {list(sample)})")
    if x.shape[0] == 0:
        raise UserError(f"{what} is empty (shape {list(x.shape)}); give at least one sample")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise UserError(f"{what} contains NaN or Inf ({x[tuple(bad)]} in sample {int(bad[0])} at "
                        f"{tuple(int(i) for i in bad[1:])}); remove or repair the non-finite samples")
    return x


def int_batch(graph: Graph, data: Any, what: str) -> np.ndarray:
    """Validate quantised inputs in qgen layout (N, H, W, C) / (N, F) of the input's integer type, or one sample."""
    x = as_array(data)
    inp = graph.tensors[graph.inputs[0]]
    info = np.iinfo(inp.dtype)
    if x.dtype.kind not in "iu":
        raise UserError(f"{what} has dtype {x.dtype}; give {inp.dtype} values in qgen layout (N, "
                        f"{', '.join(map(str, inp.shape))}), e.g. from result.quantize_input(x_float)")
    if x.shape == tuple(inp.shape):
        x = x[None]
    if x.shape[1:] != tuple(inp.shape) or x.shape[0] == 0:
        raise UserError(f"{what} has shape {list(x.shape)}; give at least one sample of shape {list(inp.shape)} "
                        f"(qgen layout), i.e. [N, {', '.join(map(str, inp.shape))}]")
    lo, hi = int(x.min()), int(x.max())
    if lo < info.min or hi > info.max:
        raise UserError(f"{what} holds values in [{lo}, {hi}], outside {inp.dtype}'s [{info.min}, {info.max}]; "
                        f"give quantised inputs, e.g. from result.quantize_input(x_float)")
    return x.astype(inp.dtype)


def check_out_dir(path: str | Path) -> Path:
    """An output directory qgen may replace: refuse the current directory, one of its parents (the filesystem
    root included) and a dangling symlink; a symlink to a directory is followed (its target is replaced)."""
    path = Path(path)
    if path.is_symlink():
        if not path.exists():
            raise UserError(f"output path '{path}' is a symlink to '{os.readlink(path)}', which does not exist; "
                            "choose a directory for --out")
        if not path.is_dir():
            raise UserError(f"output path '{path}' is a symlink to a file; choose a directory for --out")
        path = path.resolve()  # the generated files go where the link points
    target, cwd = path.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        what = "the current directory" if target == cwd else \
            ("the filesystem root" if target == target.parent else "a parent of the current directory")
        raise UserError(f"--out '{path}' is {what}; qgen replaces the whole output directory and cannot "
                        "replace that. Choose a subdirectory, e.g. --out build/model")
    return path


def _is_shape(value: Any) -> bool:
    """A tuple of ints (e.g. (1, 1, 8, 8) or a torch.Size): an input shape, not input data."""
    return isinstance(value, tuple) and len(value) > 0 and \
        all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in value)


@dataclass
class CompileResult:
    graph: Graph  # quantised, memory-planned IR
    float_graph: Graph  # calibrated float IR (after folding/fusion), same tensor names
    prefix: str
    files: dict[str, str | bytes]
    report: dict
    out_dir: Path | None = None
    options: CompileOptions | None = None  # what the compile was asked (None: an older output directory)
    window_graph: Graph | None = None  # --stream: the quantised whole-window model `graph` (one step) streams
    _host: HostModel | None = field(default=None, repr=False)

    # -- the integer reference (the spec)
    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float input in PyTorch layout (N, C, H, W) / (N, F) -> int8 (N, H, W, C) / (N, F) (int16 with
        `precision={"input": 16}`). One sample (no batch axis) is taken as a batch of one. A streaming model
        (stream=True) takes sequences of any length, (N, C, L) / (N, L, F): its frames in order, (N, 1, L, C)."""
        if self.streams:
            x = as_array(x)
            if x.ndim != 3 or x.dtype.kind not in "fiu" or not np.all(np.isfinite(x)):
                raise UserError(f"give float sequences (N, C, L) (a Conv1d input) or (N, L, F) (batch-first), "
                                f"finite; got {x.dtype} {list(x.shape)}")
            return quantize_input(self.graph, x.astype(np.float32))
        return quantize_input(self.graph, float_batch(self.graph, x, "input data"))

    def reference(self, x_i8: np.ndarray) -> np.ndarray:
        """int8 outputs (N, OUTPUT_SIZE) of the integer reference, exactly what the C must produce. A streaming
        model: int sequences (N, 1, L, C) (from quantize_input), each one stream from a reset -> the outputs of
        every step (N, L, OUTPUT_SIZE)."""
        if self.streams:
            return self.stream().run(_sequences(self.graph, x_i8))
        x_i8 = int_batch(self.graph, x_i8, "reference input")
        values = run_int(self.graph, x_i8)
        n = x_i8.shape[0]
        return np.concatenate([values[o].reshape(n, -1) for o in self.graph.outputs], axis=1).astype(np.int8)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float in, dequantised float out (first output, PyTorch layout), via the integer reference. A streaming
        model: float sequences, each one stream from a reset -> the first output at each one's last step."""
        if self.streams:
            frames, runner = self.quantize_input(x), self.stream()
            runner.reset(frames.shape[0])
            for t in range(frames.shape[2]):
                values = runner.values(frames[:, :, t:t + 1])
        else:
            values = run_int(self.graph, self.quantize_input(x))
        out = self.graph.outputs[0]
        return to_torch_layout(dequantize(values[out], self.graph.tensors[out].qformat),
                               self.graph.io_layout.get(out))

    # -- the generated C, compiled for the host
    def host(self) -> HostModel:
        if self._host is None:
            inp = self.graph.tensors[self.graph.inputs[0]]
            out_size = sum(self.graph.tensors[o].size for o in self.graph.outputs)
            stream = self.streams  # <prefix>_step / _reset instead of _run
            if self.out_dir is not None:
                self._host = HostModel(self.out_dir, self.prefix, inp.size, out_size, stream=stream)
            else:  # an in-memory result: the C files are needed only while cffi builds (into its cache)
                with tempfile.TemporaryDirectory(prefix="qgen-") as tmp:
                    write_atomic(self.files, Path(tmp) / "model")
                    self._host = HostModel(Path(tmp) / "model", self.prefix, inp.size, out_size, stream=stream)
        return self._host

    def verify(self, x: np.ndarray | None = None) -> VerifyResult:
        """C (host, cffi) == reference on float inputs x (PyTorch layout), or the saved samples. A streaming model:
        each sample (any number of frames) is one stream, every step compared with codegen/stream.py's spec."""
        if self.streams:
            from .stream import verify_stream

            seqs = self.saved_inputs() if x is None else quantize_input(self.graph, as_array(x))
            return verify_stream(self.graph, self.host(), seqs)
        x_i8 = quantize_input(self.graph, float_batch(self.graph, x, "verification data")) if x is not None \
            else self.saved_inputs()
        return host_verify(self.graph, self.host(), x_i8)

    # -- streaming (--stream: `graph` is one step, codegen/passes/stream.py)
    @property
    def streams(self) -> bool:
        """Compiled with stream=True: `graph` is one step (<prefix>_step / <prefix>_reset in C)."""
        return self.window_graph is not None or (self.options is not None and self.options.emit.stream)

    def stream(self):
        """The streaming spec: a codegen.stream.StreamRunner (reset(), step(frame)) over the step graph."""
        from .stream import StreamRunner

        if not self.streams:
            raise UserError("this model was not compiled with stream=True (qgen compile --stream)")
        return StreamRunner(self.graph)

    def saved_inputs(self) -> np.ndarray:
        import io

        return np.load(io.BytesIO(self.files["qgen_verify_inputs.npy"]))


def _sequences(graph: Graph, data: Any) -> np.ndarray:
    """Int sequences (N, 1, L, C) of a streaming model's input type (its frames in order)."""
    x, inp = as_array(data), graph.tensors[graph.inputs[0]]
    info = np.iinfo(inp.dtype)
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[3] != inp.shape[2] or x.dtype.kind not in "iu" or not x.size \
            or x.min() < info.min or x.max() > info.max:
        raise UserError(f"give {inp.dtype} sequences (N, 1, L, {inp.shape[2]}) (qgen layout, e.g. from "
                        f"result.quantize_input(x_float)); got {x.dtype} {list(x.shape)}")
    return x


def _frontend(model: Any, example_input: Any, lim: limits_mod.Limits | None = None) -> Graph:
    if isinstance(model, Graph):  # a float IR graph a front end made (codegen.fuse.ensemble merges several)
        import copy

        return copy.deepcopy(model)
    import torch  # here, not at module level: qgen verify / firmware / run never load torch

    from .frontend import from_exported_program, from_module, load_model

    if isinstance(model, (str, Path)) and str(model).endswith(".onnx"):
        from .frontend.onnx_import import from_onnx_file  # optional dependency: the `onnx` package

        return from_onnx_file(str(model))
    if isinstance(model, (str, Path)):
        shape = tuple(example_input) if isinstance(example_input, (tuple, list)) else None
        if shape is not None and lim is not None:
            limits_mod.check_input_shape(shape, lim)  # before load_model allocates the example input
        model, example = load_model(str(model), shape)
        example_input = example if example is not None else example_input
    if isinstance(model, torch.export.ExportedProgram):
        return from_exported_program(model, source=type(model.module()).__name__ if hasattr(model, "module") else "")
    if isinstance(model, torch.nn.Module):
        if example_input is None:
            raise UserError("give an example input (a tensor of the model's input shape) to export the module")
        if _is_shape(example_input):  # compile(model, (1, 1, 8, 8)): an input shape, documented
            if any(int(d) <= 0 for d in example_input):
                raise UserError(f"input shape {tuple(int(d) for d in example_input)}: dimensions must be positive")
            if lim is not None:
                limits_mod.check_input_shape(tuple(example_input), lim)
            example_input = torch.zeros(tuple(int(d) for d in example_input))
        elif not isinstance(example_input, torch.Tensor):
            example_input = torch.as_tensor(as_array(example_input), dtype=torch.float32)
        return from_module(model, example_input)
    raise UserError(f"cannot compile a {type(model).__name__}; give an nn.Module, an ExportedProgram, "
                    "a 'model.pt2' path or a 'file.py:factory' string")


def data_fingerprint(data: Any) -> str:
    """'64x3x16x16 float32 sha256:0123456789ab': which samples shaped the output (for the banner)."""
    import hashlib

    array = np.ascontiguousarray(np.asarray(data))
    digest = hashlib.sha256(array.tobytes()).hexdigest()[:12]
    return f"{'x'.join(map(str, array.shape))} {array.dtype} sha256:{digest}"


RANDOM_CALIB_BYTES = 256 << 20  # float64 N(0,1) samples drawn when no calibration data is given


def _random_samples(torch_shape: tuple[int, ...]) -> int:
    """64 random calibration samples, fewer for inputs so large that 64 would take over RANDOM_CALIB_BYTES."""
    per_sample = 8 * int(np.prod(torch_shape, dtype=np.int64))
    return int(max(1, min(64, RANDOM_CALIB_BYTES // max(per_sample, 1))))


@progress.tracked("compile")
def compile(model: Any, example_input: Any = None, calib_data: np.ndarray | None = None, *,
            options: CompileOptions | None = None,
            prefix: str | None = None, out_dir: str | Path | None = None, command: str | None = None,
            eval_data: np.ndarray | None = None,
            extra_passes: list[tuple[str, Callable[[Graph], Graph]]] | None = None,
            calibration: str | None = None, percentile: float | None = None, bias_correction: bool | None = None,
            equalize: bool | None = None, precision: dict[str, int] | None = None,
            auto_precision: float | None = None, labels: np.ndarray | None = None, weights: str | None = None,
            max_flash: int | None = None, max_ram: int | None = None, board: str | None = None,
            arena_argument: bool | None = None, stream: bool | None = None,
            train: tuple[np.ndarray, np.ndarray] | None = None) -> CompileResult:
    """Compile a PyTorch model to Q-format C.

    model: nn.Module (with example_input), torch.export.ExportedProgram, 'model.pt2' or 'file.py:factory'.
        The module's training flags are left as they were (it is exported in eval mode).
    example_input: a tensor of the input shape, batch first (e.g. torch.zeros(1, 1, 8, 8)), or that shape
        as a tuple of ints, (1, 1, 8, 8).
    calib_data: float samples in PyTorch layout (N, C, H, W) / (N, F) for activation ranges. If None,
        standard-normal random inputs are used (fine for size/speed, poor for accuracy).
    options: a CompileOptions (codegen/options.py: quant=QuantOptions, compress=CompressOptions,
        emit=EmitOptions, limits=LimitOptions) holding every option below; a keyword given as well
        overrides its field. The options used are recorded in report.json, qgen_graph.json and on
        result.options; `codegen.pipeline(options)` prints the passes they run.
    out_dir: where to write the generated files (atomically); None keeps them in memory.
    command: an optional note recorded in the banner as given ("Command: ..."); the banner always records
        qgen's version and these options in canonical form, never sys.argv or paths.
    eval_data: samples for the report's per-layer error (defaults to calib_data).
    extra_passes: (name, fn) float-IR passes run after folding/fusion and before calibration
        (compression: channel pruning, low-rank...), each verified like the built-in ones.
    train: (x, y) training samples and integer labels for compression fine-tuning / gradient importance
        (options.compress).
    calibration: how activation ranges are chosen: "minmax" (no calibration value saturates),
        "percentile" (that percentile of |x|), "mse" (the frac with the least squared error) or "kl" (the
        least KL divergence between the histogram and its quantised form, as TensorRT's entropy calibration).
    bias_correction: subtract each channel's mean quantisation error (measured on calib_data) from its bias.
    equalize: cross-layer equalisation by powers of two between consecutive conv/linear layers.
    precision: {layer name: 8 or 16}: layers whose output activations are int16 (mixed precision;
        weights stay int8), e.g. {"features.0": 16}. See passes/assign_precision.py.
    weights: "int8" (default) or "int4": packed int4 weights for every conv2d/depthwise/linear layer with int8
        activations (QuantOptions.weights; per layer: precision={"fc": 4}).
    auto_precision: a bound on the accuracy drop in percentage points (e.g. 0.5): raise the most
        sensitive layers to int16 until eval_data meets it (codegen/precision.py). `labels` (one per
        eval sample) make it a true accuracy drop; without them it is top-1 disagreement with the float model.
    max_flash, max_ram: bytes of flash for the constant arrays and of RAM for the activations; a model that
        cannot fit is refused (UserError) as soon as that is known, before calibration where possible
        (codegen/limits.py). Default: `board`'s (a name in boards/*.toml), else the largest flash and RAM
        among the known boards.
    arena_argument: `<prefix>_run(in, out, arena)` takes the arena from the caller (reentrant; no static
        arena), EmitOptions.arena_argument.
    stream: one frame at a time (EmitOptions.stream, `qgen compile --stream`): `<prefix>_step(frame, out)` and
        `<prefix>_reset()` for a model over a time axis; result.graph is then one step, result.window_graph the
        whole-window model it streams, result.stream() the stateful spec (codegen/stream.py).
    """
    start = time.perf_counter()
    options = _merge_options(options, prefix=prefix, calibration=calibration, percentile=percentile,
                             bias_correction=bias_correction, equalize=equalize, precision=precision,
                             auto_precision=auto_precision, weights=weights, max_flash=max_flash, max_ram=max_ram,
                             board=board, arena_argument=arena_argument, stream=stream)
    q, prefix = options.quant, options.emit.prefix
    check_prefix(prefix)
    out_dir = check_out_dir(out_dir) if out_dir is not None else None
    lim = limits_mod.limits(options.limits.max_flash, options.limits.max_ram, options.limits.board)
    progress.current().update(info="export")
    graph = _frontend(model, example_input, lim)
    progress.current().update(info="float passes")
    in_shape = graph.tensors[graph.inputs[0]].shape
    layout = graph.io_layout.get(graph.inputs[0], "nf")
    if layout == "nchw":
        torch_shape = (in_shape[2], in_shape[0], in_shape[1])
    elif layout == "ncl":
        torch_shape = (in_shape[2], in_shape[1])
    elif layout == "nlc":
        torch_shape = (in_shape[1], in_shape[2])
    else:
        torch_shape = in_shape
    if calib_data is not None:
        calib_data = as_array(calib_data)  # a torch tensor that requires grad too
    if eval_data is not None:
        eval_data = float_batch(graph, eval_data, "eval_data")
    calib_text = "N(0,1) random, seed 0" if calib_data is None else data_fingerprint(calib_data)
    if calib_data is None:
        limits_mod.check_input_shape(torch_shape, lim)
        calib_data = np.random.default_rng(0).standard_normal((_random_samples(torch_shape), *torch_shape))
        calib_data = calib_data.astype(np.float32)
    calib_data = np.asarray(calib_data)
    ctx = Context(calib=calib_data, lim=lim, extra_passes=list(extra_passes or []), train=train,
                  model=model, example=example_input, eval_data=eval_data, labels=labels)
    floats = driver.float_passes(options, ctx)
    graph = run_pipeline(graph, list(floats))
    report_extra: dict = {}
    if q.calibration != "minmax":  # minmax reports stay byte-identical
        report_extra["calibration"] = q.calibration
    if ctx.auto is not None:
        report_extra["auto_precision"] = ctx.auto.to_dict()
        report_extra["precision_lines"] = ctx.auto.lines()
    names = floats.names
    extra_names = names[names.index("fuse_activation") + 1:names.index("check_limits")]  # compression + caller's
    banner_options = option_text(prefix=prefix, calibration=q.calibration,
                                 **({"percentile": q.percentile} if q.calibration == "percentile" else {}),
                                 bias_correction=q.bias_correction, equalize=q.equalize, precision=q.precision,
                                 auto_precision=q.auto_precision,
                                 **({"weights": q.weights} if q.weights != "int8" else {}),
                                 extra_passes=extra_names,
                                 calib=calib_text,
                                 **({"arena_argument": True} if options.emit.arena_argument else {}),
                                 **({"stream": True} if options.emit.stream else {}))
    eval_x = eval_data if eval_data is not None else calib_data
    return driver.lower(graph, options, ctx, eval_x=eval_x, banner_options=banner_options,
                        command=command, out_dir=out_dir, report_extra=report_extra, start=start)


def _merge_options(options: CompileOptions | None, **keywords: Any) -> CompileOptions:
    """`options` (default CompileOptions()) with each keyword that was given (not None) put in its field."""
    options = options if options is not None else CompileOptions()
    if not isinstance(options, CompileOptions):
        raise UserError(f"options must be a codegen.CompileOptions, got {type(options).__name__}")
    groups = {"quant": ("calibration", "percentile", "bias_correction", "equalize", "precision", "auto_precision",
                        "weights"),
              "emit": ("prefix", "arena_argument", "stream"), "limits": ("max_flash", "max_ram", "board")}
    changes = {}
    for group, names in groups.items():
        given = {n: keywords[n] for n in names if keywords.get(n) is not None}
        if given:
            if "precision" in given:
                given["precision"] = dict(given["precision"])
            changes[group] = dataclasses.replace(getattr(options, group), **given)
    return dataclasses.replace(options, **changes) if changes else options


def load_compiled(out_dir: str | Path) -> CompileResult:
    """Re-open a generated output directory (for `qgen verify`)."""
    out_dir = Path(out_dir)
    gj, gz = out_dir / "qgen_graph.json", out_dir / "qgen_graph.npz"
    if not gj.is_file() or not gz.is_file():
        raise UserError(f"'{out_dir}' is not a qgen output directory (no qgen_graph.json); run qgen compile first")
    graph = serialize.loads(gj.read_text(), gz.read_bytes())
    prefix = next((p.name[: -len("_model.h")] for p in out_dir.glob("*_model.h")), None)
    if prefix is None:
        raise UserError(f"'{out_dir}' has no <prefix>_model.h")
    files = {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file()}
    report = {}
    if (out_dir / "report.json").is_file():
        import json

        report = json.loads((out_dir / "report.json").read_text())
    recorded = serialize.load_options(gj.read_text())
    options = CompileOptions.from_dict(recorded) if recorded is not None else None
    return CompileResult(graph, graph, prefix, files, report, out_dir, options)
