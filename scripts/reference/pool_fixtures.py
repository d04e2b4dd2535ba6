#!/usr/bin/env python3
"""Pooling fixtures, computed independently of the Rust code (numpy, float64).

Writes residual-runtime/src/pool/fixtures/pool_cases.txt: for each case, a config (kernel,
stride, padding), an NCHW input whose values are multiples of 0.25 (so windows hold ties and the
"first maximum" rule is exercised), the max-pool and avg-pool outputs with PyTorch's semantics
(max: padding is -inf, gradient to the first maximum in row-major window order; avg:
count_include_pad=True, ceil_mode=False), a weight tensor `w`, and the gradients of
sum(pool(x) * w) with respect to x. The Rust tests in residual-runtime/src/pool/tests.rs read it.

Format: one record per line, `<tag> <numbers...>`; `case` opens a case, the others follow it.

Regenerate (needs numpy from PyPI):
  python3 -m venv .venv-ref && .venv-ref/bin/pip install numpy
  .venv-ref/bin/python scripts/reference/pool_fixtures.py
"""
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "residual-runtime", "src", "pool", "fixtures")

# (kernel, stride, padding, batch, channels, height, width)
CASES = [
    (2, 2, 0, 1, 2, 4, 6),
    (3, 2, 1, 3, 2, 7, 5),
    (3, 1, 1, 1, 1, 5, 5),
    (2, 1, 0, 3, 2, 3, 4),
    (3, 3, 0, 2, 1, 7, 8),
    (2, 2, 1, 1, 3, 5, 4),
]


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def pool(x, k, s, p, kind, w):
    b, c, h, wd = x.shape
    oh, ow = out_size(h, k, s, p), out_size(wd, k, s, p)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.full((b, c, h + 2 * p, wd + 2 * p), fill)
    xp[:, :, p:p + h, p:p + wd] = x
    out = np.zeros((b, c, oh, ow))
    gp = np.zeros_like(xp)
    for bi in range(b):
        for ci in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    win = xp[bi, ci, oy * s:oy * s + k, ox * s:ox * s + k]
                    if kind == "max":
                        i = int(np.argmax(win.reshape(-1)))  # first maximum, row-major
                        out[bi, ci, oy, ox] = win.reshape(-1)[i]
                        gp[bi, ci, oy * s + i // k, ox * s + i % k] += w[bi, ci, oy, ox]
                    else:
                        out[bi, ci, oy, ox] = win.sum() / (k * k)
                        gp[bi, ci, oy * s:oy * s + k, ox * s:ox * s + k] += w[bi, ci, oy, ox] / (k * k)
    return out, gp[:, :, p:p + h, p:p + wd]


def fmt(tag, values):
    return tag + " " + " ".join(repr(float(v)) for v in np.asarray(values).reshape(-1))


def main():
    rng = np.random.default_rng(20261128)
    lines = []
    for k, s, p, b, c, h, wd in CASES:
        x = rng.integers(-8, 9, size=(b, c, h, wd)) / 4.0
        oh, ow = out_size(h, k, s, p), out_size(wd, k, s, p)
        w = rng.integers(-4, 5, size=(b, c, oh, ow)) / 2.0
        mx, gmx = pool(x, k, s, p, "max", w)
        av, gav = pool(x, k, s, p, "avg", w)
        lines.append(f"case {k} {s} {p} {b} {c} {h} {wd} {oh} {ow}")
        lines += [fmt("input", x), fmt("w", w), fmt("max", mx), fmt("max_grad", gmx), fmt("avg", av), fmt("avg_grad", gav)]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "pool_cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
