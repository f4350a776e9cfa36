"""Several models in one firmware: distinct prefixes, one shared arena; they link together (strict
flags, host and Cortex-M) and each stays bit-exact."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from models import GlobalPoolNet, make_residual

from codegen import compile as qcompile
from codegen.bundle import bundle, bundle_sources
from codegen.errors import UserError
from codegen.hostcheck import STRICT_CFLAGS

HARNESS_C = r"""
/* Runs model argv[1] (index in the bundle table) on the int8 vectors of argv[2], writes argv[3]. */
#include <stdio.h>
#include <stdlib.h>
#include "fw_bundle.h"

int main(int argc, char **argv)
{
    static int8_t in[4096], out[4096];
    const fw_model_t *m;
    FILE *fi, *fo;
    if (argc != 4) { return 2; }
    m = &fw_models[atoi(argv[1])];
    if (m->input_size > (int32_t)sizeof in || m->output_size > (int32_t)sizeof out) { return 3; }
    fi = fopen(argv[2], "rb"); fo = fopen(argv[3], "wb");
    if (fi == NULL || fo == NULL) { return 3; }
    while (fread(in, 1, (size_t)m->input_size, fi) == (size_t)m->input_size) {
        if (m->run(in, out) != 0) { return 4; }
        if (fwrite(out, 1, (size_t)m->output_size, fo) != (size_t)m->output_size) { return 5; }
    }
    fclose(fi); fclose(fo);
    return 0;
}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    model, x = make_residual()
    calib = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    res = qcompile(model, x, calib, prefix="res")
    torch.manual_seed(0)
    gp_dir = tmp_path_factory.mktemp("gp") / "gp"
    gp_calib = np.random.default_rng(1).standard_normal((16, 2, 9, 9)).astype(np.float32)
    gp = qcompile(GlobalPoolNet().eval(), torch.from_numpy(gp_calib[:1]), gp_calib, prefix="gp", out_dir=gp_dir)
    out = tmp_path_factory.mktemp("bundle") / "fw"
    result = bundle([res, gp_dir], out, name="fw")  # a CompileResult and an output directory
    samples = {"res": res.quantize_input(np.concatenate([calib, 8 * calib])),
               "gp": gp.quantize_input(np.concatenate([gp_calib, 8 * gp_calib]))}
    return {"res": res, "gp": gp}, result, samples


def test_shared_arena_is_the_largest_and_models_use_it(models):
    compiled, result, _ = models
    assert result.arena_size == max(c.graph.arena_size for c in compiled.values()) > 0
    assert f"#define FW_ARENA_SIZE {result.arena_size}" in result.files["fw_bundle.h"]
    for prefix in ("res", "gp"):
        model_c = result.files[f"{prefix}_model.c"]
        assert "extern int8_t fw_arena[];" in model_c and f"static int8_t {prefix}_arena" not in model_c
    manifest = json.loads(result.files["fw_bundle.json"])
    assert [m["prefix"] for m in manifest["models"]] == ["res", "gp"]
    assert sum(1 for name in result.files if name.endswith("qg_kernels.h")) == 1  # one kernel library


def test_models_link_together_strict_and_stay_bit_exact(models, tmp_path):
    compiled, result, samples = models
    d = result.out_dir
    (tmp_path / "main.c").write_text(HARNESS_C)
    exe = tmp_path / "fw"
    cmd = ["gcc", *STRICT_CFLAGS, "-O1", "-I", str(d), "-I", str(d / "kernels"), str(tmp_path / "main.c"),
           *map(str, bundle_sources(d)), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    symbols = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=False).stdout
    assert " fw_arena" in symbols and "res_arena" not in symbols and "gp_arena" not in symbols
    for index, prefix in enumerate(("res", "gp")):  # alternate: each run reuses the other's arena bytes
        x = samples[prefix]
        x.reshape(len(x), -1).tofile(tmp_path / "in.bin")
        run = subprocess.run([str(exe), str(index), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=False)
        assert run.returncode == 0
        got = np.fromfile(tmp_path / "out.bin", np.int8).reshape(len(x), -1)
        np.testing.assert_array_equal(got, compiled[prefix].reference(x), err_msg=prefix)


def test_clashing_prefixes_are_refused(models, tmp_path):
    compiled, _, _ = models
    with pytest.raises(UserError, match="two models have the prefix 'res'"):
        bundle([compiled["res"], compiled["res"]])
    with pytest.raises(UserError, match="equals the bundle name"):
        bundle([compiled["gp"]], name="gp")


def test_bundle_runs_bit_exact_on_cortex_m(models, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"needs {', '.join(missing_tools())}")
    compiled, result, samples = models
    d = result.out_dir
    sources = [p for p in bundle_sources(d)]
    elf = build_elf("mps2-an386", sources, [d, d / "kernels"], "gp", tmp_path / "build",
                    extra_cflags=("-Werror", "-Wconversion"))  # both models linked; the harness runs gp
    x = samples["gp"][:8]
    out = run_qemu("mps2-an386", elf, x.reshape(len(x), -1), 4, count_instructions=False).outputs
    np.testing.assert_array_equal(out, compiled["gp"].reference(x))
