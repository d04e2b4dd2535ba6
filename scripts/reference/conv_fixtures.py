#!/usr/bin/env python3
"""Reference values for residual-runtime's conv2d tests, computed with numpy only.

Regenerate (from the repository root):

    .venv-ref/bin/python scripts/reference/conv_fixtures.py \
        > residual-runtime/src/conv/fixtures/conv2d.txt

(`scripts/setup_reference.sh` makes .venv-ref; any Python with numpy works.)

Inputs are not stored: both sides compute them from the same formula,
    x[i] = sin(0.37 * i + 0.1),   w[i] = 0.5 * cos(0.23 * i + 0.2)    (i = flat row-major index)
so the file only holds what the Rust tests compare against, for the loss L = sum(y ** 2):
    y = conv2d(x, w),  dx = dL/dx,  dw = dL/dw.
The conv here is written independently of the Rust kernels: forward gathers a padded input
window by window (einsum), backward scatters 2 * y through the same windows.

Output format, one record per case:
    case <name> <batched 0/1> B C O H W K stride padding dilation groups
    y <n> v...
    dx <n> v...
    dw <n> v...
"""

import sys

import numpy as np

# name, batched, B, C, O, H, W, K, stride, padding, dilation, groups
CASES = [
    ("k3_s1_p1_b3", 1, 3, 4, 6, 7, 5, 3, 1, 1, 1, 1),
    ("k1_s1_p0_b1", 1, 1, 5, 3, 4, 6, 1, 1, 0, 1, 1),
    ("k1_s1_p0_b3", 1, 3, 5, 3, 4, 6, 1, 1, 0, 1, 1),
    ("k1_s2_p0_b3", 1, 3, 4, 4, 7, 6, 1, 2, 0, 1, 1),
    ("k7_s2_p3_b1", 1, 1, 3, 4, 12, 10, 7, 2, 3, 1, 1),
    ("k3_s2_p1_g2_b3", 1, 3, 4, 6, 9, 8, 3, 2, 1, 1, 2),
    ("k3_s1_p1_depthwise_b3", 1, 3, 4, 8, 6, 7, 3, 1, 1, 1, 4),
    ("k3_s2_p1_d2_depthwise_b1", 1, 1, 3, 3, 8, 9, 3, 2, 1, 2, 3),
    ("k3_s1_p2_d2_b1", 1, 1, 2, 3, 9, 8, 3, 1, 2, 2, 1),
    ("k3_s1_p0_unbatched", 0, 1, 3, 5, 6, 5, 3, 1, 0, 1, 1),
    ("k3_s2_p1_g2_unbatched", 0, 1, 4, 2, 5, 6, 3, 2, 1, 1, 2),
]


def inputs(b, c, o, h, w, k, groups):
    nx = b * c * h * w
    nw = o * (c // groups) * k * k
    x = np.sin(0.37 * np.arange(nx, dtype=np.float64) + 0.1).reshape(b, c, h, w)
    wt = 0.5 * np.cos(0.23 * np.arange(nw, dtype=np.float64) + 0.2).reshape(o, c // groups, k, k)
    return x, wt


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def windows(xp, k, s, d, oh, ow):
    """xp: padded [B, Cg, Hp, Wp] -> [B, Cg, K, K, OH, OW] (views of each tap)."""
    taps = np.empty(xp.shape[:2] + (k, k, oh, ow))
    for ky in range(k):
        for kx in range(k):
            y0, x0 = ky * d, kx * d
            taps[:, :, ky, kx] = xp[:, :, y0 : y0 + s * (oh - 1) + 1 : s, x0 : x0 + s * (ow - 1) + 1 : s]
    return taps


def conv(x, wt, k, s, p, d, groups):
    b, c, h, w = x.shape
    o = wt.shape[0]
    cg, og = c // groups, o // groups
    oh, ow = out_size(h, k, s, p, d), out_size(w, k, s, p, d)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.empty((b, o, oh, ow))
    for g in range(groups):
        taps = windows(xp[:, g * cg : (g + 1) * cg], k, s, d, oh, ow)
        y[:, g * og : (g + 1) * og] = np.einsum("bcijyx,ocij->boyx", taps, wt[g * og : (g + 1) * og])
    return y


def conv_grads(x, wt, gy, k, s, p, d, groups):
    b, c, h, w = x.shape
    o = wt.shape[0]
    cg, og = c // groups, o // groups
    oh, ow = gy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(wt)
    for g in range(groups):
        gyg = gy[:, g * og : (g + 1) * og]
        wg = wt[g * og : (g + 1) * og]
        taps = windows(xp[:, g * cg : (g + 1) * cg], k, s, d, oh, ow)
        gw[g * og : (g + 1) * og] = np.einsum("boyx,bcijyx->ocij", gyg, taps)
        for ky in range(k):
            for kx in range(k):
                y0, x0 = ky * d, kx * d
                contrib = np.einsum("boyx,oc->bcyx", gyg, wg[:, :, ky, kx])
                gxp[:, g * cg : (g + 1) * cg, y0 : y0 + s * (oh - 1) + 1 : s, x0 : x0 + s * (ow - 1) + 1 : s] += contrib
    gx = gxp[:, :, p : p + h, p : p + w]
    return gx, gw


def fmt(name, arr):
    flat = np.asarray(arr, dtype=np.float64).ravel()
    return f"{name} {flat.size} " + " ".join(repr(float(v)) for v in flat)


def main():
    out = sys.stdout
    for (name, batched, b, c, o, h, w, k, s, p, d, groups) in CASES:
        x, wt = inputs(b, c, o, h, w, k, groups)
        y = conv(x, wt, k, s, p, d, groups)
        gx, gw = conv_grads(x, wt, 2.0 * y, k, s, p, d, groups)
        out.write(f"case {name} {batched} {b} {c} {o} {h} {w} {k} {s} {p} {d} {groups}\n")
        out.write(fmt("y", y) + "\n")
        out.write(fmt("dx", gx) + "\n")
        out.write(fmt("dw", gw) + "\n")


if __name__ == "__main__":
    main()
