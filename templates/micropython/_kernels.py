# ---------------------------------------------------------------- kernels
# Hand-written integer kernels, the twins of firmware/kernels/qg_*.c (same arithmetic, same order of
# parameters). Tensors are int8 memoryviews in channels-last (H, W, C) order. Requantisation is
# y = clamp((acc * mul + rnd) >> shr, act_min, act_max): qgen's rounding rule (round half up) with
# (mul, rnd, shr) prepared by the generator; Python's >> is an arithmetic (floor) shift like the spec.


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
"""
_dots = None
try:
    import micropython  # noqa: F401

    exec(_VIPER_SRC)
except Exception:  # CPython (no micropython module), or no native emitter (SyntaxError)
    _dots = None


def _int8_rows(data, row_len):
    """bytes (int8 two's complement) -> tuple of int8 rows of row_len (views on one array)."""
    mv = memoryview(array('b', data))
    return tuple(mv[i:i + row_len] for i in range(0, len(mv), row_len))


def _conv2d(x, y, p, patch, zeros):
    # im2col one output pixel into `patch` (zeros for padding), list the patch's nonzero positions
    # once, then one dot product per output channel over those only: post-ReLU activations and
    # padding are mostly zeros, and a skipped zero costs nothing in any of the Cout dot products.
    (h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl,
     weights, bias, mul, rnd, shr, lo, hi) = p
    row = kw * cin
    nk = kh * row
    rk = range(nk)
    dots = _dots
    accs = array('i', bytes(4 * cout)) if dots is not None else None
    rc = range(cout)
    rky = range(kh)
    rkx = range(kw)
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        for ox in range(ow):
            ix0 = ox * sw - pl
            inside = ix0 >= 0 and ix0 + kw <= w
            q = 0
            for ky in rky:
                iy = iy0 + ky
                if iy < 0 or iy >= h:
                    patch[q:q + row] = zeros[0:row]
                elif inside:
                    s = (iy * w + ix0) * cin
                    patch[q:q + row] = x[s:s + row]
                else:
                    s = (iy * w + ix0) * cin
                    for kx in rkx:
                        ix = ix0 + kx
                        if ix < 0 or ix >= w:
                            patch[q + kx * cin:q + kx * cin + cin] = zeros[0:cin]
                        else:
                            patch[q + kx * cin:q + kx * cin + cin] = x[s + kx * cin:s + kx * cin + cin]
                q += row
            if dots is not None:
                dots(patch, nk, weights[0], cout, accs)  # rows are contiguous views of one array
                for co in rc:
                    acc = ((accs[co] + bias[co]) * mul[co] + rnd[co]) >> shr[co]
                    y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                    yo += 1
                continue
            nz = [k for k in rk if patch[k]]
            for co in rc:
                wr = weights[co]
                acc = bias[co]
                for k in nz:
                    acc += patch[k] * wr[k]
                acc = (acc * mul[co] + rnd[co]) >> shr[co]
                y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                yo += 1


def _depthwise_conv2d(x, y, p):
    # output channel co reads input channel co // multiplier (PyTorch groups order); padding taps
    # are skipped (they would multiply zero).
    (h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl,
     weights, bias, mul, rnd, shr, lo, hi) = p
    rm = range(cout // cin)
    rc = range(cin)
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        rky = range(max(0, -iy0), min(kh, h - iy0))
        for ox in range(ow):
            ix0 = ox * sw - pl
            rkx = range(max(0, -ix0), min(kw, w - ix0))
            co = 0
            for c in rc:
                for _ in rm:
                    wr = weights[co]
                    acc = bias[co]
                    for ky in rky:
                        s = ((iy0 + ky) * w + ix0) * cin + c
                        t = ky * kw
                        for kx in rkx:
                            acc += x[s + kx * cin] * wr[t + kx]
                    acc = (acc * mul[co] + rnd[co]) >> shr[co]
                    y[yo + co] = lo if acc < lo else (hi if acc > hi else acc)
                    co += 1
            yo += cout


def _linear(x, y, p):
    n_in, n_out, weights, bias, mul, rnd, shr, lo, hi = p
    if _dots is not None:
        accs = array('i', bytes(4 * n_out))
        _dots(x, n_in, weights[0], n_out, accs)  # rows are contiguous views of one array
        for o in range(n_out):
            acc = ((accs[o] + bias[o]) * mul[o] + rnd[o]) >> shr[o]
            y[o] = lo if acc < lo else (hi if acc > hi else acc)
        return
    nz = [i for i in range(n_in) if x[i]]  # zeros contribute nothing: skip them in every row
    for o in range(n_out):
        wr = weights[o]
        acc = bias[o]
        for i in nz:
            acc += x[i] * wr[i]
        acc = (acc * mul[o] + rnd[o]) >> shr[o]
        y[o] = lo if acc < lo else (hi if acc > hi else acc)


def _maxpool2d(x, y, p):
    # padding cells are skipped
    h, w, c, oh, ow, kh, kw, sh, sw, pt, pl = p
    rc = range(c)
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        rky = range(max(0, -iy0), min(kh, h - iy0))
        for ox in range(ow):
            ix0 = ox * sw - pl
            rkx = range(max(0, -ix0), min(kw, w - ix0))
            for ch in rc:
                m = -128
                for ky in rky:
                    s = ((iy0 + ky) * w + ix0) * c + ch
                    for kx in rkx:
                        v = x[s + kx * c]
                        if v > m:
                            m = v
                y[yo] = m
                yo += 1


def _avgpool2d(x, y, p):
    # padding cells count as zero (PyTorch count_include_pad=True): the divisor is always KH*KW,
    # folded into avg_mult/shr by the generator
    h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, avg_mult, rnd, shr, lo, hi = p
    rc = range(c)
    yo = 0
    for oy in range(oh):
        iy0 = oy * sh - pt
        rky = range(max(0, -iy0), min(kh, h - iy0))
        for ox in range(ow):
            ix0 = ox * sw - pl
            rkx = range(max(0, -ix0), min(kw, w - ix0))
            for ch in rc:
                acc = 0
                for ky in rky:
                    s = ((iy0 + ky) * w + ix0) * c + ch
                    for kx in rkx:
                        acc += x[s + kx * c]
                acc = (acc * avg_mult + rnd) >> shr
                y[yo] = lo if acc < lo else (hi if acc > hi else acc)
                yo += 1


def _add(a, b, y, p):
    # align both inputs to a common frac (each with the rounding rule), add, requantise
    n, mul_a, rnd_a, shr_a, mul_b, rnd_b, shr_b, mul, rnd, shr, lo, hi = p
    for i in range(n):
        acc = ((a[i] * mul_a + rnd_a) >> shr_a) + ((b[i] * mul_b + rnd_b) >> shr_b)
        acc = (acc * mul + rnd) >> shr
        y[i] = lo if acc < lo else (hi if acc > hi else acc)


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
