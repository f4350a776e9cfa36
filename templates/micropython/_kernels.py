# ---------------------------------------------------------------- kernels
# Hand-written integer kernels, the twins of firmware/kernels/qg_*.c (same arithmetic, same order of
# parameters). Tensors are int8 memoryviews in channels-last (H, W, C) order. Requantisation is
# y = clamp((acc * mul + rnd) >> shr, act_min, act_max): qgen's rounding rule (round half up) with
# (mul, rnd, shr) prepared by the generator; Python's >> is an arithmetic (floor) shift like the spec.
# A call allocates (almost) nothing: scratch is preallocated by the module (`s`: conv patch, zero row,
# nonzero values and positions, accumulators) and loops are `for i in range(a, b)` written in the for
# statement (MicroPython compiles those to counters; a stored range object would be a heap allocation).


# Optional machine-code dot products: `@micropython.viper` is compiled from a string because a port
# without the native emitter (e.g. the WebAssembly port) raises SyntaxError on the decorator when the
# module is compiled; there, and on CPython, _dots stays None and the plain Python loops run. Viper ints
# are machine words: a dot product of int8 rows is bounded by the accumulator limit quantize.py
# enforces (|acc| <= 2**31 - 1), so it is exact in 32 bits; bias and requantisation stay in Python.
_VIPER_SRC = """
@micropython.viper
def _dots(x, n: int, w, rows: int, acc):
    # acc[r] = sum(x[k] * w[r * n + k] for k < n); x, w int8 (ptr8 reads bytes unsigned: sign-extend)
    px = ptr8(x)
    pw = ptr8(w)
    pa = ptr32(acc)
    o = 0
    for r in range(rows):
        s = 0
        for k in range(n):
            s += ((px[k] ^ 128) - 128) * ((pw[o + k] ^ 128) - 128)
        pa[r] = s
        o += n


@micropython.viper
def _im2col(x, patch, g, iy0: int, ix0: int):
    # patch = the (kh, kw, cin) window of x (h, w, cin) at (iy0, ix0), zeros outside;
    # g = array('i', (h, w, cin, kh, kw))
    px = ptr8(x)
    pp = ptr8(patch)
    pg = ptr32(g)
    h = int(pg[0])
    w = int(pg[1])
    cin = int(pg[2])
    kh = int(pg[3])
    kw = int(pg[4])
    q = 0
    for ky in range(kh):
        iy = iy0 + ky
        for kx in range(kw):
            ix = ix0 + kx
            if iy < 0 or iy >= h or ix < 0 or ix >= w:
                for c in range(cin):
                    pp[q + c] = 0
            else:
                s = (iy * w + ix) * cin
                for c in range(cin):
                    pp[q + c] = px[s + c]
            q += cin
"""
_dots = None
_im2col = None
try:
    import micropython  # noqa: F401

    exec(_VIPER_SRC)
except Exception:  # CPython (no micropython module), or no native emitter (SyntaxError)
    _dots = None
    _im2col = None


def _int8_rows(data, row_len):
    """bytes (int8 two's complement) -> tuple of int8 rows of row_len (views on one array)."""
    mv = memoryview(array('b', data))
    return tuple(mv[i:i + row_len] for i in range(0, len(mv), row_len))


def _int4_rows(data, n, row_len):
    """n int4 weights packed two per byte, low nibble first -> int8 rows of row_len, as _int8_rows."""
    a = array('b', bytes(n))
    for i in range(n):
        v = (data[i >> 1] >> ((i & 1) << 2)) & 15
        a[i] = v - ((v & 8) << 1)
    mv = memoryview(a)
    return tuple(mv[i:i + row_len] for i in range(0, n, row_len))


def _conv2d(x, y, p, s):
    # Python: list the window's nonzero patch positions (and their values) once per output pixel (post-ReLU
    # activations and padding are mostly zeros, and a skipped zero costs nothing in any of the Cout dot
    # products), then one dot product per output channel over those only.
    # Viper: im2col the window into the patch, then all Cout dot products in machine code.
    (h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl,
     weights, bias, mul, rnd, shr, lo, hi) = p
    patch, nzv, nzk, accs = s  # nzv: values by patch position (only listed positions are read)
    row = kw * cin
    dots = _dots
    geometry = array('i', (h, w, cin, kh, kw)) if dots is not None else None
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        ky0 = -iy0 if iy0 < 0 else 0
        ky1 = h - iy0 if h - iy0 < kh else kh
        for ox in range(ow):
            ix0 = ox * sw - pl
            if dots is not None:
                _im2col(x, patch, geometry, iy0, ix0)
                dots(patch, kh * row, weights[0], cout, accs)  # rows are contiguous views of one array
                for co in range(cout):
                    acc = ((accs[co] + bias[co]) * mul[co] + rnd[co]) >> shr[co]
                    y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                    yo += 1
                continue
            j0 = -ix0 * cin if ix0 < 0 else 0
            j1 = (w - ix0) * cin if w - ix0 < kw else row
            n = 0
            for ky in range(ky0, ky1):
                xs = ((iy0 + ky) * w + ix0) * cin  # x index of the window row's first tap (may be outside)
                t = ky * row
                for j in range(j0, j1):
                    v = x[xs + j]
                    if v:
                        nzv[t + j] = v
                        nzk[n] = t + j
                        n += 1
            nzk[n] = -1  # end mark: emptying a list in place (nzk[:] = ()) would allocate a slice per pixel
            for co in range(cout):
                wr = weights[co]
                acc = bias[co]
                for k in nzk:
                    if k < 0:
                        break
                    acc += nzv[k] * wr[k]
                acc = (acc * mul[co] + rnd[co]) >> shr[co]
                y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                yo += 1


def _depthwise_conv2d(x, y, p):
    # output channel co reads input channel co // multiplier (PyTorch groups order); padding taps
    # are skipped (they would multiply zero).
    (h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl,
     weights, bias, mul, rnd, shr, lo, hi) = p
    mult = cout // cin
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        ky0 = -iy0 if iy0 < 0 else 0
        ky1 = h - iy0 if h - iy0 < kh else kh
        for ox in range(ow):
            ix0 = ox * sw - pl
            kx0 = -ix0 if ix0 < 0 else 0
            kx1 = w - ix0 if w - ix0 < kw else kw
            co = 0
            for c in range(cin):
                for _ in range(mult):
                    wr = weights[co]
                    acc = bias[co]
                    for ky in range(ky0, ky1):
                        xs = ((iy0 + ky) * w + ix0) * cin + c
                        t = ky * kw
                        for kx in range(kx0, kx1):
                            acc += x[xs + kx * cin] * wr[t + kx]
                    acc = (acc * mul[co] + rnd[co]) >> shr[co]
                    y[yo + co] = lo if acc < lo else (hi if acc > hi else acc)
                    co += 1
            yo += cout


def _conv2d_general(x, y, p):
    # grouped and/or dilated conv, dilated depthwise: output channel co reads the cg input channels from
    # (co // og) * cg (depthwise: og = multiplier, cg = 1), taps dh rows / dw pixels apart; padding taps
    # are skipped (they would multiply zero).
    (h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl,
     weights, bias, mul, rnd, shr, lo, hi, dh, dw, og, cg) = p
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        for ox in range(ow):
            ix0 = ox * sw - pl
            for co in range(cout):
                wr = weights[co]
                acc = bias[co]
                c0 = (co // og) * cg
                t = 0
                for ky in range(kh):
                    iy = iy0 + ky * dh
                    for kx in range(kw):
                        ix = ix0 + kx * dw
                        if 0 <= iy < h and 0 <= ix < w:
                            xs = (iy * w + ix) * cin + c0
                            for c in range(cg):
                                acc += x[xs + c] * wr[t + c]
                        t += cg
                acc = (acc * mul[co] + rnd[co]) >> shr[co]
                y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                yo += 1


def _linear(x, y, p, s):
    n_in, n_out, weights, bias, mul, rnd, shr, lo, hi = p
    accs, nzk = s[3], s[2]
    if _dots is not None:
        _dots(x, n_in, weights[0], n_out, accs)  # rows are contiguous views of one array
        for o in range(n_out):
            acc = ((accs[o] + bias[o]) * mul[o] + rnd[o]) >> shr[o]
            y[o] = lo if acc < lo else (hi if acc > hi else acc)
        return
    n = 0
    for i in range(n_in):  # zeros contribute nothing: list the nonzeros once for every row
        if x[i]:
            nzk[n] = i
            n += 1
    nzk[n] = -1
    for o in range(n_out):
        wr = weights[o]
        acc = bias[o]
        for i in nzk:
            if i < 0:
                break
            acc += x[i] * wr[i]
        acc = (acc * mul[o] + rnd[o]) >> shr[o]
        y[o] = lo if acc < lo else (hi if acc > hi else acc)


def _conv_transpose2d(x, y, p):
    # gather form (as qg_conv_transpose2d_s8): output row oy meets the taps ky with (oy + pt - ky * dh) % sh
    # == 0, at input row (oy + pt - ky * dh) // sh; the window's input pixels are listed once per output pixel;
    # output channel co reads the cg input channels of its group (co // og)
    (h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl,
     weights, bias, mul, rnd, shr, lo, hi, groups, dh, dw) = p
    cg, og = cin // groups, cout // groups
    yo = 0
    for oy in range(oh):
        rows = []  # (input row, ky) of the taps of output row oy
        for ky in range(kh):
            t = oy + pt - ky * dh
            if t % sh == 0 and 0 <= t // sh < h:
                rows.append((t // sh, ky))
        for ox in range(ow):
            taps = []  # (x index, weight index) of each input pixel the output pixel reads
            for iy, ky in rows:
                for kx in range(kw):
                    t = ox + pl - kx * dw
                    if t % sw == 0 and 0 <= t // sw < w:
                        taps.append(((iy * w + t // sw) * cin, (ky * kw + kx) * cg))
            for co in range(cout):
                wr = weights[co]
                acc = bias[co]
                c0 = (co // og) * cg
                for xs, ws in taps:
                    xs += c0
                    for i in range(cg):
                        acc += x[xs + i] * wr[ws + i]
                acc = (acc * mul[co] + rnd[co]) >> shr[co]
                y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                yo += 1


def _resize(x, y, p):
    # nearest: a copy of x[y0[oy], x0[ox]]; bilinear: the Q s weights' sum, one rounding (2s bits)
    h, w, c, oh, ow, bilinear, s, y0, x0, y1, x1, wy, wx = p
    one = 1 << s
    rnd = 1 << (2 * s - 1) if bilinear else 0
    row = w * c
    yo = 0
    for oy in range(oh):
        r0 = y0[oy] * row
        if not bilinear:
            for ox in range(ow):
                xs = r0 + x0[ox] * c
                for i in range(c):
                    y[yo] = x[xs + i]
                    yo += 1
            continue
        r1 = y1[oy] * row
        wy1 = wy[oy]
        wy0 = one - wy1
        for ox in range(ow):
            a, b = r0 + x0[ox] * c, r0 + x1[ox] * c
            d, e = r1 + x0[ox] * c, r1 + x1[ox] * c
            wx1 = wx[ox]
            wx0 = one - wx1
            for i in range(c):
                acc = wy0 * (wx0 * x[a + i] + wx1 * x[b + i]) + wy1 * (wx0 * x[d + i] + wx1 * x[e + i])
                y[yo] = (acc + rnd) >> (2 * s)
                yo += 1


def _maxpool2d(x, y, p):
    # padding cells are skipped
    h, w, c, oh, ow, kh, kw, sh, sw, pt, pl = p
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        ky0 = -iy0 if iy0 < 0 else 0
        ky1 = h - iy0 if h - iy0 < kh else kh
        for ox in range(ow):
            ix0 = ox * sw - pl
            kx0 = -ix0 if ix0 < 0 else 0
            kx1 = w - ix0 if w - ix0 < kw else kw
            for ch in range(c):
                m = -128
                for ky in range(ky0, ky1):
                    xs = ((iy0 + ky) * w + ix0) * c + ch
                    for kx in range(kx0, kx1):
                        v = x[xs + kx * c]
                        if v > m:
                            m = v
                y[yo] = m
                yo += 1


def _avgpool2d(x, y, p):
    # padding cells count as zero (PyTorch count_include_pad=True): the divisor is always KH*KW,
    # folded into avg_mult/shr by the generator
    h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, avg_mult, rnd, shr, lo, hi = p
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        ky0 = -iy0 if iy0 < 0 else 0
        ky1 = h - iy0 if h - iy0 < kh else kh
        for ox in range(ow):
            ix0 = ox * sw - pl
            kx0 = -ix0 if ix0 < 0 else 0
            kx1 = w - ix0 if w - ix0 < kw else kw
            for ch in range(c):
                acc = 0
                for ky in range(ky0, ky1):
                    xs = ((iy0 + ky) * w + ix0) * c + ch
                    for kx in range(kx0, kx1):
                        acc += x[xs + kx * c]
                acc = (acc * avg_mult + rnd) >> shr
                y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                yo += 1


def _maxpool2d_windows(x, y, p):
    # explicit windows, clipped to the image: rows/cols hold (first, end, class) per output row/column
    w, c, rows, cols = p
    yo = 0
    for r in range(0, len(rows), 3):
        for q in range(0, len(cols), 3):
            for ch in range(c):
                m = -32768
                for iy in range(rows[r], rows[r + 1]):
                    xs = iy * w * c + ch
                    for ix in range(cols[q], cols[q + 1]):
                        v = x[xs + ix * c]
                        if v > m:
                            m = v
                y[yo] = m
                yo += 1


def _avgpool2d_windows(x, y, p):
    # each window's own divisor d: sum * mult[row class * col_classes + col class] (round(2**shr / d))
    w, c, rows, cols, mult, ncls, rnd, shr, lo, hi = p
    yo = 0
    for r in range(0, len(rows), 3):
        for q in range(0, len(cols), 3):
            m = mult[rows[r + 2] * ncls + cols[q + 2]]
            for ch in range(c):
                acc = 0
                for iy in range(rows[r], rows[r + 1]):
                    xs = iy * w * c + ch
                    for ix in range(cols[q], cols[q + 1]):
                        acc += x[xs + ix * c]
                acc = (acc * m + rnd) >> shr
                y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                yo += 1


def _reduce(x, y, p):
    # mean (sum * avg_mult + rnd >> shr) or max over each row of `size` values (the last axis)
    rows, size, is_max, avg_mult, rnd, shr, lo, hi = p
    for r in range(rows):
        row = x[r * size:(r + 1) * size]
        if is_max:
            y[r] = max(row)
        else:
            acc = (sum(row) * avg_mult + rnd) >> shr
            y[r] = lo if acc < lo else (hi if acc > hi else acc)


def _concat(*args):
    # _concat(part0, part1, ..., y, p): per outer block, each part's block requantised to the output format
    parts, y, p = args[:-2], args[-2], args[-1]
    outer, out_block, blocks, muls, rnds, shrs = p
    for o in range(outer):
        b = o * out_block
        for k in range(len(parts)):
            x, n, mul, rnd, shr = parts[k], blocks[k], muls[k], rnds[k], shrs[k]
            a = o * n
            for i in range(n):
                v = (x[a + i] * mul + rnd) >> shr
                y[b + i] = -128 if v < -128 else (127 if v > 127 else v)
            b += n


def _mean(*args):
    # _mean(part0, part1, ..., y, p): each part aligned to the common frac ((x * mul + rnd) >> shr), summed, then
    # (sum * avg_mult * mul + rnd) >> shr once (codegen/ops/combine.py: one rounding)
    parts, y, p = args[:-2], args[-2], args[-1]
    size, muls, rnds, shrs, avg_mult, mul, rnd, shr, lo, hi = p
    n = len(parts)
    for e in range(size):
        acc = 0
        for k in range(n):
            acc += (parts[k][e] * muls[k] + rnds[k]) >> shrs[k]
        acc = (acc * avg_mult * mul + rnd) >> shr
        y[e] = lo if acc < lo else (hi if acc > hi else acc)


def _vote(*args):
    # _vote(part0, part1, ..., y, p): y[c] = 2 * votes + 1 on the decided class (most votes, then the largest
    # aligned sum, then the lowest index); each part votes for its first maximum (codegen/ops/combine.py)
    parts, y, p = args[:-2], args[-2], args[-1]
    size, muls, rnds, shrs = p
    n = len(parts)
    for c in range(size):
        y[c] = 0
    for k in range(n):
        x = parts[k]
        pick = 0
        for c in range(1, size):
            if x[c] > x[pick]:
                pick = c
        y[pick] += 2
    best, best_sum, win = 0, 0, 0
    for c in range(size):
        v = y[c]
        if v > best or (v == best and v > 0):
            total = 0
            for k in range(n):
                total += (parts[k][c] * muls[k] + rnds[k]) >> shrs[k]
            if v > best or total > best_sum:
                best, best_sum, win = v, total, c
    y[win] += 1


def _transpose(x, y, p):
    # a physical permutation copy: the loops of qg_transpose_s8 (dims padded with leading 1s to 6, innermost
    # last), each with its input and output stride
    n0, n1, n2, n3, n4, n5, s0, s1, s2, s3, s4, s5, o0, o1, o2, o3, o4, o5 = p
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                for i3 in range(n3):
                    for i4 in range(n4):
                        a = i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3 + i4 * s4
                        b = i0 * o0 + i1 * o1 + i2 * o2 + i3 * o3 + i4 * o4
                        for i5 in range(n5):
                            y[b] = x[a]
                            a += s5
                            b += o5


def _slice(x, y, p):
    # `outer` blocks of in_block values: out_block of each, from value `offset` on
    outer, in_block, out_block, offset = p
    for o in range(outer):
        a = o * in_block + offset
        b = o * out_block
        for i in range(out_block):
            y[b + i] = x[a + i]


def _matmul(a, b, y, p):
    # y[z, i, j] = requant(sum_k a[z, i, k] * b[z, j, k]): K innermost in both operands, one rounding
    batch, m, n, k, mul, rnd, shr, lo, hi = p
    for z in range(batch):
        for i in range(m):
            ra = (z * m + i) * k
            for j in range(n):
                rb = (z * n + j) * k
                acc = 0
                for t in range(k):
                    acc += a[ra + t] * b[rb + t]
                acc = (acc * mul + rnd) >> shr
                y[(z * m + i) * n + j] = lo if acc < lo else (hi if acc > hi else acc)


def _add(a, b, y, p):
    # align both inputs to a common frac (each with the rounding rule), add, requantise
    n, mul_a, rnd_a, shr_a, mul_b, rnd_b, shr_b, mul, rnd, shr, lo, hi = p
    for i in range(n):
        acc = ((a[i] * mul_a + rnd_a) >> shr_a) + ((b[i] * mul_b + rnd_b) >> shr_b)
        acc = (acc * mul + rnd) >> shr
        y[i] = lo if acc < lo else (hi if acc > hi else acc)


def _aligned(a, b, p):
    # sub / maximum / minimum: both inputs aligned like _add (codegen/ops/eltwise.py), yields (i, A, B)
    n, mul_a, rnd_a, shr_a, mul_b, rnd_b, shr_b = p[:7]
    for i in range(n):
        yield i, (a[i] * mul_a + rnd_a) >> shr_a, (b[i] * mul_b + rnd_b) >> shr_b


def _sub(a, b, y, p):
    mul, rnd, shr, lo, hi = p[7:]
    for i, va, vb in _aligned(a, b, p):
        acc = ((va - vb) * mul + rnd) >> shr
        y[i] = lo if acc < lo else (hi if acc > hi else acc)


def _maximum(a, b, y, p):
    mul, rnd, shr, lo, hi = p[7:]
    for i, va, vb in _aligned(a, b, p):
        acc = ((va if va > vb else vb) * mul + rnd) >> shr
        y[i] = lo if acc < lo else (hi if acc > hi else acc)


def _minimum(a, b, y, p):
    mul, rnd, shr, lo, hi = p[7:]
    for i, va, vb in _aligned(a, b, p):
        acc = ((va if va < vb else vb) * mul + rnd) >> shr
        y[i] = lo if acc < lo else (hi if acc > hi else acc)


def _mul(a, b, y, p):
    # a * b requantised once; b has n (same shape) or C elements (one pixel, used for every pixel)
    n, bn, mul, rnd, shr, lo, hi = p
    for i in range(0, n, bn):
        for c in range(bn):
            acc = (a[i + c] * b[c] * mul + rnd) >> shr
            y[i + c] = lo if acc < lo else (hi if acc > hi else acc)


def _bcast(a, b, y, p):
    # add/sub/mul/maximum/minimum (op 0..4) of operands that broadcast: the output is the row-major
    # (n0, n1, n2, n3) nest, a and b read at their own strides (0 along a broadcast dim); mul aligns by 0
    op, dims, sa, sb, mul_a, rnd_a, shr_a, mul_b, rnd_b, shr_b, mul, rnd, shr, lo, hi = p
    n0, n1, n2, n3 = dims
    o = 0
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                ja = i0 * sa[0] + i1 * sa[1] + i2 * sa[2]
                jb = i0 * sb[0] + i1 * sb[1] + i2 * sb[2]
                for k in range(n3):
                    va = (a[ja + k * sa[3]] * mul_a + rnd_a) >> shr_a
                    vb = (b[jb + k * sb[3]] * mul_b + rnd_b) >> shr_b
                    if op == 0:
                        r = va + vb
                    elif op == 1:
                        r = va - vb
                    elif op == 2:
                        r = va * vb
                    elif op == 3:
                        r = va if va > vb else vb
                    else:
                        r = va if va < vb else vb
                    acc = (r * mul + rnd) >> shr
                    y[o] = lo if acc < lo else (hi if acc > hi else acc)
                    o += 1


def _affine(x, y, p):
    n, mult, bias, mul, rnd, shr, lo, hi = p
    for i in range(n):
        acc = ((x[i] * mult + bias) * mul + rnd) >> shr
        y[i] = lo if acc < lo else (hi if acc > hi else acc)


def _prelu(x, y, p):
    # x >= 0 ? x * 2^slope_frac : x * slope[c], one requantisation
    n, one, mul, rnd, shr, lo, hi, slope = p
    ch = len(slope)
    for i in range(0, n, ch):
        for c in range(ch):
            v = x[i + c]
            acc = (v * (one if v >= 0 else slope[c]) * mul + rnd) >> shr
            y[i + c] = lo if acc < lo else (hi if acc > hi else acc)


def _channel_affine(x, y, p):
    # x * scale[c] + offset[c], requantised per channel (codegen/ops/norm.py affine_int)
    n, ch, lo, hi, scale, offset, mul, rnd, shr = p
    for i in range(0, n, ch):
        for c in range(ch):
            acc = ((x[i + c] * scale[c] + offset[c]) * mul[c] + rnd[c]) >> shr[c]
            y[i + c] = lo if acc < lo else (hi if acc > hi else acc)


def _isqrt(v):
    # floor(sqrt(v)), bit by bit (qg_isqrt64 in firmware/kernels/qg_norm_s8.c)
    r = 0
    b = 1 << 62
    while b > v:
        b >>= 2
    while b:
        if v >= r + b:
            v -= r + b
            r = (r >> 1) + b
        else:
            r >>= 1
        b >>= 2
    return r


def _norm(x, y, p):
    # layer / group norm (codegen/ops/norm.py norm_int): exact sums, W = n * sum(x^2) - sum(x)^2 + eps,
    # 1/sqrt(W) ~= inv * 2^(e - 60), x-hat at frac fh, x-hat * gamma + beta << bsh, one rounding shift.
    # Intermediates reach 2^62: Python ints (a MicroPython port with long ints, as every usual one has).
    rows, pixels, ch, groups, eps, fh, bsh, osh, lo, hi, gamma, beta = p
    cg = ch // groups
    n = pixels * cg
    half = (1 << (osh - 1)) if osh > 0 else 0
    for r in range(rows):
        row = r * pixels * ch
        for g in range(groups):
            c0 = g * cg
            s = 0
            q = 0
            for px in range(pixels):
                a = row + px * ch + c0
                for i in range(a, a + cg):
                    v = x[i]
                    s += v
                    q += v * v
            w = n * q - s * s + eps
            e = 0
            while w < (1 << 60):
                w <<= 2
                e += 1
            t = _isqrt(w)
            inv = ((1 << 60) + (t >> 1)) // t
            sh = 60 - e - fh
            rnd = (1 << (sh - 1)) if sh > 0 else 0
            for px in range(pixels):
                a = row + px * ch + c0
                for c in range(cg):
                    xh = ((n * x[a + c] - s) * inv + rnd) >> sh
                    acc = (xh * gamma[c0 + c] + (beta[c0 + c] << bsh) + half) >> osh
                    y[a + c] = lo if acc < lo else (hi if acc > hi else acc)


def _tanh_q12(u, tab):
    # tanh of int16 Q12 u -> Q15: table entry plus the interpolated rest (codegen/ops/recurrent.py tanh_q12)
    v = u + 32768
    i = v >> 7
    lo = tab[i]
    return lo + (((tab[i + 1] - lo) * (v & 127) + 64) >> 7)


def _sigmoid_q11(u, tab):
    # sigmoid of int16 Q11 u -> Q15 in [0, 32767]: (1 + tanh(u / 2)) / 2, the Q11 value read as Q12
    v = (_tanh_q12(u, tab) + 32769) >> 1
    return 32767 if v > 32767 else v


def _tanh_q11(u, tab):
    u += u
    return _tanh_q12(-32768 if u < -32768 else (32767 if u > 32767 else u), tab)


def _recurrent(x, y, p):
    # one GRU / LSTM / RNN layer over (T, I) int8 x (codegen/ops/recurrent.py int_run): int8 weights per gate
    # row, int16 state h (or the int8 output with state_bits 8), aligned gate sums saturated to int16 Q11,
    # one Q15 tanh table for tanh and sigmoid. kind: 0 GRU, 1 LSTM, 2 RNN tanh, 3 RNN relu.
    (kind, steps, n_in, hid, reverse, last, w_ih, w_hh, b_ih, b_hh, xmul, xrnd, xshr, hmul, hrnd, hshr,
     h0, c0, up, state8, csh, cmul, crnd, cshr, omul, ornd, oshr, lo, hi, tab, h, c, ax, ah) = p
    lim = 1 << 24
    rows = len(b_ih)
    for j in range(hid if h0 is not None else 0):  # h0 None: a streaming step, the state persists (reset() sets it)
        h[j] = h0[j]
        if kind == 1:
            c[j] = c0[j]
    for k in range(steps):
        t = steps - 1 - k if reverse else k
        xo = t * n_in
        for r in range(rows):  # the accumulators, aligned to the gate frac (clamped at +-2^24)
            wr = w_ih[r]
            acc = b_ih[r]
            for i in range(n_in):
                acc += x[xo + i] * wr[i]
            acc = (acc * xmul[r] + xrnd[r]) >> xshr[r]
            ax[r] = -lim if acc < -lim else (lim if acc > lim else acc)
            wr = w_hh[r]
            acc = b_hh[r]
            for i in range(hid):
                acc += h[i] * wr[i]
            if kind == 0 and r >= 2 * hid:  # GRU's candidate: h-part kept apart, requantised to int16
                acc = (acc * hmul[r] + hrnd[r]) >> hshr[r]
                ah[r] = -32768 if acc < -32768 else (32767 if acc > 32767 else acc)
            else:
                acc = (acc * hmul[r] + hrnd[r]) >> hshr[r]
                ah[r] = -lim if acc < -lim else (lim if acc > lim else acc)
        yo = 0 if last else t * hid
        for j in range(hid):
            if kind == 0:
                r = _sigmoid_q11(_sat16(ax[j] + ah[j]), tab)
                z = _sigmoid_q11(_sat16(ax[hid + j] + ah[hid + j]), tab)
                n = _tanh_q11(_sat16(ax[2 * hid + j] + ((r * ah[2 * hid + j] + 16384) >> 15)), tab)
                new = _sat16(n + ((z * ((h[j] << up) - n) + 16384) >> 15))
            elif kind == 1:
                ig = _sigmoid_q11(_sat16(ax[j] + ah[j]), tab)
                fg = _sigmoid_q11(_sat16(ax[hid + j] + ah[hid + j]), tab)
                g = _tanh_q11(_sat16(ax[2 * hid + j] + ah[2 * hid + j]), tab)
                o = _sigmoid_q11(_sat16(ax[3 * hid + j] + ah[3 * hid + j]), tab)
                cj = _sat16(((fg * c[j] + 16384) >> 15) + ((ig * g + (1 << (csh - 1))) >> csh))
                c[j] = cj
                v = (cj * cmul + crnd) >> cshr
                new = _sat16((o * _tanh_q12(-32768 if v < -32768 else (32767 if v > 32767 else v), tab) + 16384) >> 15)
            elif kind == 2:
                new = _tanh_q11(_sat16(ax[j] + ah[j]), tab)
            else:
                new = _sat16(ax[j] + ah[j])
                if new < 0:
                    new = 0
            v = (new * omul + ornd) >> oshr
            v = lo if v < lo else (hi if v > hi else v)
            if last:
                if k == steps - 1:
                    y[j] = v
            else:
                y[yo + j] = v
            h[j] = v if state8 else new


def _history(x, y, p):
    # streaming (codegen/ops/stream.py): w, the last `frames` frames of x (oldest first) in the state memory,
    # shifts by one frame and takes x as its newest; y = its frames 0, d, 2d, ... (the C kernel qg_history_s8)
    fb, frames, d, w = p
    keep = (frames - 1) * fb
    for i in range(keep):  # forward: each byte is read before it is overwritten
        w[i] = w[i + fb]
    for i in range(fb):
        w[keep + i] = x[i]
    o = 0
    for f in range(0, frames, d):
        a = f * fb
        for i in range(fb):
            y[o + i] = w[a + i]
        o += fb


def _set_state(dst, src):
    # streaming reset: a recurrent layer's state h (or c) <- its initial h0 (c0)
    for j in range(len(src)):
        dst[j] = src[j]


def _sat16(v):
    return -32768 if v < -32768 else (32767 if v > 32767 else v)


def _const(y, p):
    # a constant tensor (codegen/ops/const.py): its int8 values copied into the arena
    data = p[0]
    for i in range(len(data)):
        y[i] = data[i]


def _clamp(x, y, p):
    n, lo, hi = p
    for i in range(n):
        v = x[i]
        y[i] = lo if v < lo else (hi if v > hi else v)


def _quantize(v, scale):
    # float -> int8: q = floor(v * scale), q += (v*scale - q >= 0.5), saturate (fixed.quantize);
    # NaN raises ValueError
    v = v * scale
    if v >= 128.0:
        return 127
    if v < -128.0:
        return -128
    q = int(v)
    if q > v:
        q -= 1  # int() truncates towards zero: make it floor
    if v - q >= 0.5:
        q += 1
    return 127 if q > 127 else q
