"""The front door: CompileOptions mirrored by the CLI flags, recorded in the outputs, the printable pipeline,
and the caller-owned arena (`arena_argument`) from the API and the CLI."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import codegen
from codegen import cli
from codegen.api import load_compiled
from codegen.errors import UserError
from codegen.hostcheck import STRICT_CFLAGS
from codegen.options import CompileOptions, CompressOptions, EmitOptions, LimitOptions, QuantOptions


def _field_paths() -> set[str]:
    return {f"{group.name}.{f.name}" for group in dataclasses.fields(CompileOptions)
            for f in dataclasses.fields(group.default_factory())}


def _compile_flags() -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {a.dest for a in sub.choices["compile"]._actions if a.dest != "help"}


def test_every_compile_flag_maps_to_a_field_and_every_field_to_a_flag():
    flags, paths = _compile_flags(), _field_paths()
    mapped = set(cli.FLAG_FIELDS)
    assert flags == mapped | cli.FLAG_INPUTS, (flags - mapped - cli.FLAG_INPUTS, (mapped | cli.FLAG_INPUTS) - flags)
    assert not mapped & cli.FLAG_INPUTS
    targets = {t for v in cli.FLAG_FIELDS.values() for t in (v if isinstance(v, tuple) else (v,))}
    assert targets <= paths, targets - paths
    assert paths == targets | cli.API_ONLY_FIELDS, (paths - targets - cli.API_ONLY_FIELDS)
    assert not targets & cli.API_ONLY_FIELDS


def test_cli_flags_build_the_options():
    args = cli.build_parser().parse_args(
        ["compile", "m.py:make", "--prefix", "kws", "--calibration", "percentile", "--percentile", "99.9",
         "--bias-correction", "--equalize", "--precision", "a=int16", "--auto-precision", "--max-acc-drop", "1",
         "--max-flash", "64K", "--max-ram", "8K", "--prune", "0.5", "--rank", "energy:0.9", "--cluster", "4",
         "--arena-argument"])
    opts = cli.compile_options(args)
    assert opts == CompileOptions(
        quant=QuantOptions(calibration="percentile", percentile=99.9, bias_correction=True, equalize=True,
                           precision={"a": 16}, auto_precision=1.0),
        compress=CompressOptions(prune=0.5, rank_energy=0.9, cluster=4),
        emit=EmitOptions(prefix="kws", arena_argument=True), limits=LimitOptions(max_flash=65536, max_ram=8192))
    assert cli.compile_options(cli.build_parser().parse_args(["compile", "m.py:make"])) == CompileOptions()


def test_pipeline_is_named_and_printable():
    plain = codegen.pipeline(CompileOptions())
    assert str(plain) == ("separate_outputs -> fold_pad -> fold_bn -> commute_resize -> fuse_activation -> check_limits"
                          " -> calibrate -> share_concat_formats -> quantize -> concat_in_place -> plan_memory")
    opts = CompileOptions(quant=QuantOptions(equalize=True, bias_correction=True, precision={"x": 16}),
                          compress=CompressOptions(prune=0.5, cluster=4))
    assert codegen.pipeline(opts).names == [
        "separate_outputs", "fold_pad", "fold_bn", "commute_resize", "fuse_activation", "prune_magnitude", "cluster",
        "check_limits", "equalize", "assign_precision", "calibrate", "share_concat_formats", "quantize",
        "bias_correction", "concat_in_place", "plan_memory"]
    name, fn = codegen.pipeline()[0]  # each pass unpacks as the (name, fn) run_pipeline takes
    assert name == "separate_outputs" and callable(fn)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()


def _calib(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 4, 4)).astype(np.float32)


def test_options_equal_keywords_and_are_recorded(tmp_path):
    opts = CompileOptions(quant=QuantOptions(calibration="mse", equalize=True), emit=EmitOptions(prefix="net"))
    by_options = codegen.compile(_model(), (1, 1, 4, 4), _calib(), options=opts, out_dir=tmp_path / "a")
    by_keywords = codegen.compile(_model(), (1, 1, 4, 4), _calib(), prefix="net", calibration="mse", equalize=True)
    assert by_options.files["net_model.c"] == by_keywords.files["net_model.c"]
    assert by_options.files["report.json"] == by_keywords.files["report.json"]
    assert by_options.options == by_keywords.options == opts
    recorded = json.loads(by_options.files["report.json"])["options"]
    assert recorded == opts.to_dict() and recorded["quant"]["calibration"] == "mse"
    assert json.loads(by_options.files["qgen_graph.json"])["options"] == recorded
    assert load_compiled(tmp_path / "a").options == opts
    # a keyword given with options overrides that one field
    over = codegen.compile(_model(), (1, 1, 4, 4), _calib(), options=opts, prefix="other")
    assert over.options == dataclasses.replace(opts, emit=EmitOptions(prefix="other"))
    assert CompileOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts


def test_options_must_be_compile_options():
    with pytest.raises(UserError, match="CompileOptions"):
        codegen.compile(_model(), (1, 1, 4, 4), _calib(), options={"prefix": "x"})


MAIN = """
#include <stdio.h>
#include <stdlib.h>
#include "{p}_model.h"
int main(void)
{{
    static int8_t in[{P}_INPUT_SIZE], out[{P}_OUTPUT_SIZE];
    int8_t *arena = malloc({P}_ARENA_SIZE);
    if (arena == NULL || {p}_run((const {p}_input_t *)in, out, NULL) != -1) {{ return 3; }}
    while (fread(in, 1, sizeof in, stdin) == sizeof in) {{
        if ({p}_run((const {p}_input_t *)in, out, arena) != 0) {{ return 4; }}
        fwrite(out, 1, sizeof out, stdout);
    }}
    free(arena);
    return 0;
}}
"""


def _build_and_run(out: Path, prefix: str, x_i8: np.ndarray) -> np.ndarray:
    (out / "main.c").write_text(MAIN.format(p=prefix, P=prefix.upper()))
    sources = [str(out / "main.c"), *map(str, sorted(out.glob("*.c"))), *map(str, sorted(out.glob("kernels/*.c")))]
    sources = list(dict.fromkeys(sources))
    exe = out / "run"
    flags = [*STRICT_CFLAGS, "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-O1"]
    proc = subprocess.run(["gcc", *flags, "-I", str(out), "-I", str(out / "kernels"), *sources, "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(exe)], input=x_i8.tobytes(), capture_output=True, check=False)
    assert run.returncode == 0, run.stderr.decode()
    return np.frombuffer(run.stdout, np.int8).reshape(len(x_i8), -1)


def test_arena_argument_from_the_api_is_bit_exact_with_a_caller_arena(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    result = codegen.compile(_model(), (1, 1, 4, 4), _calib(), out_dir=tmp_path / "m",
                             options=CompileOptions(emit=EmitOptions(prefix="reent", arena_argument=True)))
    header, model_c = result.files["reent_model.h"], result.files["reent_model.c"]
    assert "int reent_run(const reent_input_t *in, int8_t *out, int8_t *arena);" in header
    assert "static int8_t reent_arena" not in model_c
    assert "arena_argument=True" in header  # the banner records it
    x_i8 = result.quantize_input(_calib(8))
    got = _build_and_run(tmp_path / "m", "reent", x_i8.reshape(len(x_i8), -1).astype(np.int8))
    np.testing.assert_array_equal(got, result.reference(x_i8))


def test_cli_arena_argument(tmp_path):
    model = tmp_path / "m.py"
    model.write_text("import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(6, 3))\n")
    out = tmp_path / "o"
    assert cli.main(["compile", f"{model}:make", "--input-shape", "1,6", "--prefix", "cl", "--arena-argument",
                     "--out", str(out)]) == 0
    assert "int cl_run(const cl_input_t *in, int8_t *out, int8_t *arena);" in (out / "cl_model.h").read_text()
    assert json.loads((out / "report.json").read_text())["options"]["emit"]["arena_argument"] is True
