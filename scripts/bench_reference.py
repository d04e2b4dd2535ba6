#!/usr/bin/env python3
"""PyTorch CPU timings of ResNet-50's conv layers, the reference for examples/bench_conv.rs.

Setup once: bash scripts/setup_reference.sh       (makes the git-ignored .venv-ref)
Run:        .venv-ref/bin/python scripts/bench_reference.py [--reps 5] [--batches 1,8]

Same layers, same medians-of-N method and the same GFLOP/s definition (2 * MACs / time;
backward counts twice the forward's MACs) as the Rust example. fp32, NCHW, 2 threads.
Forward runs under torch.no_grad(); backward is autograd's conv backward (input and weight
gradients) for a given output gradient, timed without the forward.
"""

import argparse
import time

import torch
import torch.nn.functional as F

# name, in, out, k, stride, input size, count  (torchvision resnet50 v1.5, 224x224)
RESNET50 = [
    ("conv1", 3, 64, 7, 2, 224, 1),
    ("layer1 1x1 reduce (first)", 64, 64, 1, 1, 56, 1),
    ("layer1 3x3", 64, 64, 3, 1, 56, 3),
    ("layer1 1x1 expand + downsample", 64, 256, 1, 1, 56, 4),
    ("layer1 1x1 reduce", 256, 64, 1, 1, 56, 2),
    ("layer2 1x1 reduce (first)", 256, 128, 1, 1, 56, 1),
    ("layer2 3x3 stride 2", 128, 128, 3, 2, 56, 1),
    ("layer2 1x1 expand", 128, 512, 1, 1, 28, 4),
    ("layer2 downsample", 256, 512, 1, 2, 56, 1),
    ("layer2 1x1 reduce", 512, 128, 1, 1, 28, 3),
    ("layer2 3x3", 128, 128, 3, 1, 28, 3),
    ("layer3 1x1 reduce (first)", 512, 256, 1, 1, 28, 1),
    ("layer3 3x3 stride 2", 256, 256, 3, 2, 28, 1),
    ("layer3 1x1 expand", 256, 1024, 1, 1, 14, 6),
    ("layer3 downsample", 512, 1024, 1, 2, 28, 1),
    ("layer3 1x1 reduce", 1024, 256, 1, 1, 14, 5),
    ("layer3 3x3", 256, 256, 3, 1, 14, 5),
    ("layer4 1x1 reduce (first)", 1024, 512, 1, 1, 14, 1),
    ("layer4 3x3 stride 2", 512, 512, 3, 2, 14, 1),
    ("layer4 1x1 expand", 512, 2048, 1, 1, 7, 3),
    ("layer4 downsample", 1024, 2048, 1, 2, 14, 1),
    ("layer4 1x1 reduce", 2048, 512, 1, 1, 7, 2),
    ("layer4 3x3", 512, 512, 3, 1, 7, 2),
]


def median_time(reps, f):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def sgemm_peak(n=4096, reps=3):
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    c = torch.empty(n, n)
    s = median_time(reps, lambda: torch.mm(a, b, out=c))
    return 2 * n**3 / s / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    peak = sgemm_peak()
    print(f"SGEMM peak (torch.mm, 4096^3, f32): {peak:.1f} GFLOP/s\n")

    for batch in [int(b) for b in args.batches.split(",")]:
        print(f"batch {batch}  (times are medians of {args.reps} runs, per conv; total = sum x count)")
        print(f"{'layer':<32} {'in':>5} {'out':>5} {'k':>3} {'s':>2} {'H':>4} {'x':>3} | "
              f"{'fwd ms':>9} {'GFLOP/s':>7} | {'bwd ms':>9} {'GFLOP/s':>7}")
        fwd_total = bwd_total = flops_total = 0.0
        for (name, cin, cout, k, s, h, count) in RESNET50:
            p = k // 2
            x = torch.randn(batch, cin, h, h) * 0.1
            w = torch.randn(cout, cin, k, k) * 0.1
            with torch.no_grad():
                y = F.conv2d(x, w, stride=s, padding=p)

                def fwd():
                    F.conv2d(x, w, stride=s, padding=p)

                t_fwd = median_time(args.reps, fwd)
            oh, ow = y.shape[2], y.shape[3]
            macs = batch * cout * oh * ow * cin * k * k
            gy = torch.randn_like(y)
            xg = x.clone().requires_grad_(True)
            wg = w.clone().requires_grad_(True)

            # Time only the backward: build the graph outside the timed region each rep.
            ts = []
            for i in range(args.reps + 1):
                yy = F.conv2d(xg, wg, stride=s, padding=p)
                t = time.perf_counter()
                yy.backward(gy)
                dt = time.perf_counter() - t
                xg.grad = None
                wg.grad = None
                if i > 0:
                    ts.append(dt)
            ts.sort()
            t_bwd = ts[len(ts) // 2]

            flops = 2.0 * macs
            print(f"{name:<32} {cin:>5} {cout:>5} {k:>3} {s:>2} {h:>4} {count:>3} | "
                  f"{t_fwd * 1e3:>9.3f} {flops / t_fwd / 1e9:>7.1f} | "
                  f"{t_bwd * 1e3:>9.3f} {2 * flops / t_bwd / 1e9:>7.1f}")
            fwd_total += t_fwd * count
            bwd_total += t_bwd * count
            flops_total += flops * count
        fr = flops_total / fwd_total / 1e9
        br = 2 * flops_total / bwd_total / 1e9
        print(f"TOTAL batch {batch}: forward {fwd_total * 1e3:.1f} ms = {fr:.1f} GFLOP/s "
              f"({100 * fr / peak:.0f}% of SGEMM peak); backward {bwd_total * 1e3:.1f} ms = "
              f"{br:.1f} GFLOP/s ({100 * br / peak:.0f}% of peak)\n")


if __name__ == "__main__":
    main()
