"""Split deployment: parts run in sequence are bit-exact with the unsplit model (reference, host C,
the byte stream between them, and two QEMU boards); invalid cuts are refused by name."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from models import make_residual

from codegen import compile as qcompile
from codegen import split
from codegen.errors import UserError
from codegen.hostcheck import STRICT_CFLAGS, HostModel


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    model, x = make_residual()
    calib = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    result = qcompile(model, x, calib, prefix="res")
    x_i8 = result.quantize_input(np.concatenate([calib, 8 * calib]))
    out = tmp_path_factory.mktemp("split") / "res_split"
    parts = split.split_model(result, ["add"], out_dir=out)
    return result, x_i8, parts


def test_every_valid_cut_chains_to_the_unsplit_reference(residual):
    result, x_i8, _ = residual
    points = split.valid_split_points(result.graph)
    assert points == ["c1", "add", "bn2", "pool", "avg", "flatten"]  # c2 is inside the residual block
    expect = result.reference(x_i8)
    for at in points:
        graphs, (boundary,) = split.split_graph(result.graph, [at])
        assert boundary.after == at and boundary.qformat == result.graph.tensors[boundary.tensor].qformat
        chained = split.SplitResult("res", [split.Part(k, f"res_part{k}", g, 0, 0) for k, g in enumerate(graphs)],
                                    [boundary]).run_int(x_i8)
        np.testing.assert_array_equal(chained[-1], expect, err_msg=at)
    graphs, boundaries = split.split_graph(result.graph, ["pool", "c1"])  # three parts, any order
    three = split.SplitResult("res", [split.Part(k, f"res_part{k}", g, 0, 0) for k, g in enumerate(graphs)], boundaries)
    assert [b.after for b in boundaries] == ["c1", "pool"] and [b.nbytes for b in boundaries] == [512, 128]
    np.testing.assert_array_equal(three.run_int(x_i8)[-1], expect)


def test_parts_on_the_host_are_bit_exact_in_sequence(residual):
    result, x_i8, parts = residual
    assert [p.prefix for p in parts.parts] == ["res_part0", "res_part1"]
    assert [(b.after, b.tensor, b.nbytes) for b in parts.boundaries] == [("add", "relu_1", 512)]
    x = x_i8.reshape(len(x_i8), -1)
    for p in parts.parts:
        g = p.graph
        host = HostModel(parts.out_dir / f"part{p.index}", p.prefix, g.tensors[g.inputs[0]].size,
                         sum(g.tensors[o].size for o in g.outputs))
        x = host.run(x)
    np.testing.assert_array_equal(x, result.reference(x_i8))


PIPELINE_C = r"""
/* part0 -> pack -> byte stream -> unpack -> part1: what two devices do, in one program. */
#include <stdio.h>
#include "res_part0_model.h"
#include "res_part1_model.h"
#include "res_split.h"

int main(int argc, char **argv)
{
    static int8_t in[RES_PART0_INPUT_SIZE], mid[RES_BOUNDARY0_SIZE], mid2[RES_PART1_INPUT_SIZE];
    static int8_t out[RES_PART1_OUTPUT_SIZE];
    static uint8_t stream[RES_BOUNDARY0_STREAM_BYTES];
    FILE *fi, *fo, *fs;
    if (argc != 4) { return 2; }
    fi = fopen(argv[1], "rb"); fo = fopen(argv[2], "wb"); fs = fopen(argv[3], "wb");
    if (fi == NULL || fo == NULL || fs == NULL) { return 3; }
    while (fread(in, 1, sizeof in, fi) == sizeof in) {
        if (res_part0_run(in, mid) != 0) { return 4; }
        if (res_boundary_pack(0, mid, stream, sizeof stream) != RES_SPLIT_OK) { return 5; }
        if (fwrite(stream, 1, sizeof stream, fs) != sizeof stream) { return 6; }
        stream[0] ^= 1u;
        if (res_boundary_unpack(0, stream, sizeof stream, mid2) != RES_SPLIT_BAD_HEADER) { return 7; }
        stream[0] ^= 1u;
        if (res_boundary_unpack(0, stream, sizeof stream - 1u, mid2) != RES_SPLIT_BAD_LENGTH) { return 8; }
        if (res_boundary_unpack(0, stream, sizeof stream, mid2) != RES_SPLIT_OK) { return 9; }
        if (res_part1_run(mid2, out) != 0) { return 10; }
        if (fwrite(out, 1, sizeof out, fo) != sizeof out) { return 11; }
    }
    fclose(fi); fclose(fo); fclose(fs);
    return 0;
}
"""


def test_byte_stream_between_two_parts_links_strict_and_matches_python(residual, tmp_path):
    _, x_i8, parts = residual
    d0, d1 = parts.out_dir / "part0", parts.out_dir / "part1"
    (tmp_path / "main.c").write_text(PIPELINE_C)
    sources = [tmp_path / "main.c", d0 / "res_split.c", d0 / "res_part0_model.c", d0 / "res_part0_weights.c",
               d1 / "res_part1_model.c", d1 / "res_part1_weights.c", *sorted((d0 / "kernels").glob("*.c"))]
    exe = tmp_path / "pipeline"
    cmd = ["gcc", *STRICT_CFLAGS, "-O1", "-I", str(d0), "-I", str(d1), "-I", str(d0 / "kernels"), *map(str, sources),
           "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    x_i8[:4].tofile(tmp_path / "in.bin")
    run = subprocess.run([str(exe), *(str(tmp_path / f) for f in ("in.bin", "out.bin", "stream.bin"))], check=False)
    assert run.returncode == 0
    mids = parts.run_int(x_i8[:4])[0]
    b0 = parts.boundaries[0]
    expect_stream = b"".join(split.pack_boundary(b0, m) for m in mids)
    assert (tmp_path / "stream.bin").read_bytes() == expect_stream
    assert expect_stream[:4] == bytes([0x51, 1, 0, b0.qformat.frac])
    np.testing.assert_array_equal(split.unpack_boundary(b0, expect_stream[:b0.stream_bytes]).reshape(-1), mids[0])
    np.testing.assert_array_equal(np.fromfile(tmp_path / "out.bin", np.int8).reshape(4, -1), parts.run_int(x_i8[:4])[1])
    header = (tmp_path / "res_split_h.txt")
    header.write_text((d0 / "res_split.h").read_text())
    assert "#define RES_BOUNDARY0_SIZE 512" in header.read_text() and "#define RES_NUM_BOUNDARIES 1" in header.read_text()


def test_unpack_rejects_wrong_header(residual):
    _, _, parts = residual
    b0 = parts.boundaries[0]
    msg = split.pack_boundary(b0, np.zeros(b0.nbytes, np.int8))
    with pytest.raises(ValueError, match="header"):
        split.unpack_boundary(b0, bytes([0x51, 1, 1]) + msg[3:])  # another boundary's index
    with pytest.raises(ValueError, match="bytes"):
        split.unpack_boundary(b0, msg[:-1])


def test_invalid_split_points_are_explained(residual):
    result = residual[0]
    with pytest.raises(UserError, match=r"tensor %relu \(produced by conv2d 'c1'.*needed after the cut.*add 'add'"):
        split.split_model(result, ["c2"])
    with pytest.raises(UserError, match="'nope' is not a node.*Valid split points: c1, add, bn2, pool, avg, flatten"):
        split.split_model(result, ["nope"])
    with pytest.raises(UserError, match="produces the model output"):
        split.split_model(result, ["fc"])


def test_suggestions_rank_by_boundary_bytes_and_check_fit(residual):
    result = residual[0]
    cands = split.suggest_splits(result.graph, ["stm32f446", "rp2040"])
    assert [c.after for c in cands][:2] == ["avg", "flatten"] and cands[0].boundary_bytes == 32
    assert [c.boundary_bytes for c in cands] == sorted(c.boundary_bytes for c in cands)
    macs = sum(layer["macs"] for layer in result.report["layers"])
    assert all(sum(c.macs) == macs for c in cands)
    assert all(f.fits for c in cands for f in c.fits)
    table = split.suggestions_markdown(cands)
    assert "| `avg` | %avg_pool2d | 32 |" in table and "stm32f446: yes" in table
    with pytest.raises(UserError, match="two boards"):
        split.suggest_splits(result.graph, ["stm32f446"])


def test_two_qemu_boards_pass_the_stream_along(residual, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"needs {', '.join(missing_tools())}")
    result, x_i8, parts = residual
    x = x_i8[:3].reshape(3, -1)
    for p, board in zip(parts.parts, ("mps2-an385", "mps2-an386")):  # Cortex-M3, then Cortex-M4
        d = parts.out_dir / f"part{p.index}"
        sources = [d / f"{p.prefix}_model.c", d / f"{p.prefix}_weights.c", *sorted((d / "kernels").glob("*.c"))]
        elf = build_elf(board, sources, [d, d / "kernels"], p.prefix, tmp_path / f"build{p.index}",
                        extra_cflags=("-Werror", "-Wconversion"))
        out = run_qemu(board, elf, x, sum(p.graph.tensors[o].size for o in p.graph.outputs),
                       count_instructions=False).outputs
        if p.index == 0:  # device 0 sends the message, device 1 checks and unpacks it
            b = parts.boundaries[0]
            out = np.stack([split.unpack_boundary(b, split.pack_boundary(b, row)).reshape(-1) for row in out])
        x = out
    np.testing.assert_array_equal(x, result.reference(x_i8[:3]))
