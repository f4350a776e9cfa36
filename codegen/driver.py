"""The compile pipeline, named and printable, and the one back half (`lower`) shared by codegen.compile and
codegen.qat.compile.

    print(codegen.pipeline(CompileOptions(quant=QuantOptions(equalize=True))))
    separate_outputs -> fold_pad -> fold_bn -> commute_resize -> fuse_activation -> check_limits -> equalize
      -> calibrate -> share_concat_formats -> quantize -> concat_in_place -> plan_memory

`pipeline(options, ctx)` is the float half (front-end output -> calibrated float IR) followed by the integer
half (share_concat_formats -> quantize -> concat_in_place -> plan_memory); `lower(float_graph, options, ctx)` runs the integer half, checks the limits,
builds the report and renders the files. The passes read the data they need (calibration samples, the
limits, the calibrated float graph) from the Context, so the list can be built, printed and compared
before any data exists.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import progress
from .emit.c import model_data, render
from .ir import Graph
from .options import CompileOptions, Pass, Pipeline

VERIFY_SAMPLES_SAVED = 64  # quantised inputs stored next to the C for `qgen verify` without --data


@dataclass
class Context:
    """The data the passes of one compile read (none of it is an option)."""
    calib: np.ndarray | None = None  # float samples, PyTorch layout
    lim: Any = None  # limits.Limits
    extra_passes: list[tuple[str, Any]] = field(default_factory=list)  # the caller's own float-IR passes
    train: tuple[np.ndarray, np.ndarray] | None = None  # (x, y) for compression fine-tuning
    model: Any = None  # the torch module (compression's 'bn' channel criterion)
    example: Any = None
    eval_data: np.ndarray | None = None
    labels: np.ndarray | None = None
    float_graph: Graph | None = None  # the calibrated float IR, kept before the integer passes
    auto: Any = None  # precision.search's result, when auto_precision ran


def _compress_passes(options: CompileOptions, ctx: Context) -> list[tuple[str, Any]]:
    if not options.compress.any:
        return []
    from . import compress

    model = ctx.model if options.compress.channel_criterion == "bn" else None
    return compress.passes(options.compress, train=ctx.train, model=model, example=ctx.example)


def float_passes(options: CompileOptions, ctx: Context | None = None) -> Pipeline:
    from . import limits as limits_mod
    from .passes import assign_precision, calibrate, commute_resize, fold_bn, fold_pad, fuse_activation
    from .passes import equalize as equalize_pass
    from .passes.separate_outputs import run as separate_outputs_run

    ctx = ctx if ctx is not None else Context()
    q = options.quant
    out = Pipeline([Pass("separate_outputs", separate_outputs_run), Pass("fold_pad", fold_pad.run),
                    Pass("fold_bn", fold_bn.run), Pass("commute_resize", commute_resize.run),
                    Pass("fuse_activation", fuse_activation.run)])
    out += [Pass(name, fn) for name, fn in [*_compress_passes(options, ctx), *ctx.extra_passes]]
    int4 = assign_precision.will_be_int4(q.precision, q.weights) if q.precision or q.weights != "int8" else None
    out.append(Pass("check_limits", lambda g: limits_mod.check_float_graph(g, ctx.lim, int4)))
    if q.equalize:
        out.append(Pass("equalize", lambda g: equalize_pass.run(g, ctx.calib)))
    if q.precision or q.weights != "int8":
        out.append(Pass("assign_precision", lambda g: assign_precision.run(g, q.precision, q.weights)))
    out.append(Pass("calibrate", lambda g: calibrate.run(g, ctx.calib, method=q.calibration,
                                                         percentile=q.percentile)))
    if q.auto_precision is not None:
        out.append(Pass("auto_precision", lambda g: _auto_precision(g, options, ctx)))
    return out


def _auto_precision(graph: Graph, options: CompileOptions, ctx: Context) -> Graph:
    """Raise the most sensitive layers to int16 until the accuracy bound holds (codegen/precision.py)."""
    from . import precision as precision_mod
    from .passes import assign_precision, calibrate, run_pipeline

    q = options.quant
    eval_x = ctx.eval_data if ctx.eval_data is not None else ctx.calib
    ctx.auto = precision_mod.search(graph, eval_x, ctx.labels, q.auto_precision, ctx.calib)
    if not ctx.auto.spec:
        return graph
    return run_pipeline(graph, [
        ("assign_precision", lambda g: assign_precision.run(g, {**q.precision, **ctx.auto.spec}, q.weights)),
        ("calibrate", lambda g: calibrate.run(g, ctx.calib, method=q.calibration, percentile=q.percentile))])


def int_passes(options: CompileOptions, ctx: Context | None = None) -> Pipeline:
    from .passes import bias_correction as bias_correction_pass
    from .passes import concat_in_place, plan_memory, quantize

    ctx = ctx if ctx is not None else Context()
    out = Pipeline([Pass("share_concat_formats", concat_in_place.share_formats)])
    if options.quant.recurrent_state != 16:
        from .passes import recurrent_state

        out.append(Pass("recurrent_state", lambda g: recurrent_state.run(g, options.quant.recurrent_state)))
    out.append(Pass("quantize", quantize.run))
    if options.quant.bias_correction:
        out.append(Pass("bias_correction", lambda g: bias_correction_pass.run(g, ctx.float_graph, ctx.calib)))
    out += [Pass("concat_in_place", concat_in_place.run), Pass("plan_memory", plan_memory.run)]
    return out


def stream_passes(options: CompileOptions) -> Pipeline:
    """--stream: the quantised whole-window graph (planned: its arena is reported) -> one step, planned again."""
    from .passes import plan_memory, stream

    return Pipeline([Pass("stream", stream.run), Pass("plan_memory", plan_memory.run)] if options.emit.stream else [])


def pipeline(options: CompileOptions | None = None, ctx: Context | None = None) -> Pipeline:
    """The passes a compile with these options runs, in order (a list of Pass(name, fn); prints as names)."""
    options = options if options is not None else CompileOptions()
    return Pipeline([*float_passes(options, ctx), *int_passes(options, ctx), *stream_passes(options)])


def lower(float_graph: Graph, options: CompileOptions, ctx: Context, *, eval_x: np.ndarray, banner_options: str,
          command: str | None = None, out_dir: Path | None = None, report_extra: dict | None = None,
          start: float | None = None):
    """The back half of every compile: calibrated float IR -> integer passes -> limits -> report -> files.

    codegen.compile and codegen.qat.compile both end here. `banner_options` is the Options line of the
    banner (each caller's canonical spelling); `report_extra` adds keys to the report.
    """
    from . import limits as limits_mod
    from . import report as report_mod
    from . import serialize
    from .api import CompileResult
    from .output import banner_lines, write_atomic
    from .passes import run_pipeline
    from .reference import quantize_input, to_qgen_layout

    start = time.perf_counter() if start is None else start
    prefix = options.emit.prefix
    ctx.float_graph = float_graph
    stage = progress.current()  # the caller's task (compile): say which stage of it runs
    stage.update(info="integer passes")
    graph = run_pipeline(copy.deepcopy(float_graph), list(int_passes(options, ctx)))
    window = graph  # the whole-window quantised model: what the report measures (and a stream's spec)
    if options.emit.stream:
        from .passes.stream import stream_report

        if options.emit.arena_argument:
            from .errors import UserError

            raise UserError("--stream keeps its state in static memory between steps; it cannot be combined with "
                            "--arena-argument")
        graph = run_pipeline(copy.deepcopy(window), list(stream_passes(options)))
    lim = ctx.lim if ctx.lim is not None else limits_mod.limits(options.limits.max_flash, options.limits.max_ram,
                                                                  options.limits.board)
    from .passes.stream import state_size

    limits_mod.check_compiled(model_data(graph, prefix).weight_bytes, graph.arena_size + state_size(graph),
                              lim)  # before any C text
    eval_x = np.asarray(eval_x, dtype=np.float32)
    stage.update(info=f"report ({len(eval_x)} samples through the reference)")
    x_i8 = quantize_input(window, eval_x)
    rep = report_mod.build(window, float_graph, to_qgen_layout(window, eval_x).astype(np.float64), x_i8, prefix)
    if options.emit.stream:
        rep["stream"] = stream_report(window, graph)
    rep.update(report_extra or {})
    rep["options"] = options.to_dict()
    stage.update(info="render C")
    files: dict[str, str | bytes] = dict(render(graph, prefix, banner_lines(graph.source, banner_options, command),
                                                arena_argument=options.emit.arena_argument,
                                                stream=options.emit.stream))
    files["qgen_graph.json"], files["qgen_graph.npz"] = serialize.dumps(graph, options=rep["options"])
    files["qgen_verify_inputs.npy"] = serialize.npy_bytes(x_i8[:VERIFY_SAMPLES_SAVED])
    rep["compile_seconds"] = time.perf_counter() - start
    timeless = {k: v for k, v in rep.items() if k != "compile_seconds"}  # files stay deterministic
    files["report.md"] = report_mod.to_markdown(timeless)
    files["report.json"] = report_mod.to_json(timeless)
    result = CompileResult(graph, float_graph, prefix, files, rep, options=options,
                           window_graph=window if options.emit.stream else None)
    if out_dir is not None:
        stage.update(info=f"write {out_dir}")
        write_atomic(files, Path(out_dir))
        result.out_dir = Path(out_dir)
    return result
