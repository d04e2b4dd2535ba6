#!/usr/bin/env python3
"""PyTorch eager and onnxruntime timings of the rows of examples/bench_models.rs.

Setup once: bash scripts/setup_reference.sh      (makes the git-ignored .venv-ref; needs torch,
            torchvision, onnx, onnxruntime: REFERENCE_BENCH=1 installs them)
Run:        .venv-ref/bin/python scripts/bench_models_reference.py [--rows ...] [--reps 7]
Both sides in one command: bash scripts/bench_models.sh

Same rows, same method as the Rust example: fp32, 2 threads, random weights and inputs, medians
of --reps runs after warm-up.
- PyTorch inference: model.eval() under torch.inference_mode().
- PyTorch training step: model.train(), forward, F.cross_entropy, backward,
  SGD(lr=1e-3, momentum=0.9).step(), zero_grad() -- what the Rust row does with dfdx's Sgd.
- onnxruntime: the same PyTorch model exported with torch.onnx.export (opset 17, batch fixed),
  CPUExecutionProvider, intra_op_num_threads=2, default graph optimisations (ORT_ENABLE_ALL).
Peak RSS of each row is measured in a fresh subprocess (ru_maxrss), so rows do not inherit each
other's peaks.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

THREADS = 2
ROWS = "r50-b1,r50-b8,r152-b8,r50-b8-train,r56-b16-train,r56-b128-train"


def cifar_resnet(depth):
    """The ResNet paper's CIFAR net (option A shortcuts), as src/zoo.rs declares it."""
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, inp, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.pad = planes - inp
            self.stride = stride

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            sc = x
            if self.stride != 1 or self.pad:
                sc = x[:, :, :: self.stride, :: self.stride]
                sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(out + sc)

    n = (depth - 2) // 6

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            layers, inp = [], 16
            for planes, stride in ((16, 1), (32, 2), (64, 2)):
                for i in range(n):
                    layers.append(Block(inp, planes, stride if i == 0 else 1))
                    inp = planes
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layers(x)
            return self.fc(x.mean((2, 3)))

    return Net()


def parse_row(row):
    """'r50-b8-train' -> (model name, batch, mode)."""
    parts = row.split("-")
    name = {"r18": "resnet18", "r50": "resnet50", "r152": "resnet152", "r56": "resnet56", "vit": "vit_b_16"}[parts[0]]
    batch = int(parts[1][1:])
    mode = "train" if len(parts) > 2 and parts[2] == "train" else "infer"
    return name, batch, mode


def build(name):
    import torchvision

    if name == "resnet56":
        return cifar_resnet(56), 32, 10
    return getattr(torchvision.models, name)(), 224, 1000


def median(ts):
    ts = sorted(ts)
    return ts[len(ts) // 2], ts[0], ts[-1]


def timed(f, warmup, reps):
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return median(ts)


def run_row(row, engine, reps):
    """One row in this process; prints one JSON line."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    name, batch, mode = parse_row(row)
    model, side, classes = build(name)
    x = torch.randn(batch, 3, side, side)
    if engine == "torch" and mode == "infer":
        model.eval()
        with torch.inference_mode():
            stats = timed(lambda: model(x), 2, reps)
    elif engine == "torch":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        y = torch.arange(batch) % classes

        def step():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()

        stats = timed(step, 1, reps)
    else:
        import onnxruntime as ort

        model.eval()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.onnx")
            torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = THREADS
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x.numpy()}
            stats = timed(lambda: sess.run(None, feed), 2, reps)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"row": row, "engine": engine, "median": stats[0], "min": stats[1], "max": stats[2],
                      "rss_mb": rss_mb, "batch": batch}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=ROWS)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--one", nargs=2, metavar=("ROW", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_row(args.one[0], args.one[1], args.reps)
        return
    import torch

    print(f"# PyTorch {torch.__version__} eager and onnxruntime, fp32, {THREADS} threads")
    print(f"{'row':<16} {'engine':<12} {'median':>9} {'min':>9} {'max':>9} {'img/s':>8} {'RSS MB':>9}")
    for row in args.rows.split(","):
        engines = ["torch"] + (["onnxruntime"] if parse_row(row)[2] == "infer" else [])
        for engine in engines:
            out = subprocess.run([sys.executable, __file__, "--one", row, engine, "--reps", str(args.reps)],
                                 capture_output=True, text=True)
            lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if out.returncode != 0 or not lines:
                print(f"{row:<16} {engine:<12} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(lines[-1])
            print(f"{row:<16} {engine:<12} {r['median'] * 1e3:>9.1f} {r['min'] * 1e3:>9.1f} {r['max'] * 1e3:>9.1f} "
                  f"{r['batch'] / r['median']:>8.1f} {r['rss_mb']:>9.0f}")


if __name__ == "__main__":
    main()
