#!/usr/bin/env python3
"""PyTorch reference for examples/bench_gpu.rs: the same models, batches and modes on the same GPU.

ResNet-50 and ResNet-152 (torchvision's definitions; a built-in copy of them when torchvision is
not installed), fp32, NCHW, 224x224; inference (`model.eval()`, `torch.no_grad()`) and one
training step (`model.train()`, forward + cross-entropy + backward + SGD with momentum 0.9).
Median of --runs timed iterations after --warmup, with `torch.cuda.synchronize()` around each.

TF32 is off by default (PyTorch lets cuDNN convolutions use TF32 unless told otherwise), so both
sides compute in true fp32; `--tf32` shows what PyTorch's default gets.

    python3 scripts/bench_gpu_reference.py [--runs N] [--warmup N] [--models resnet50,resnet152]
        [--batches 32,128] [--modes infer,train] [--csv FILE] [--tf32] [--channels-last]
"""
import argparse
import statistics
import sys
import time

import torch
import torch.nn as nn


def torchvision_resnet(name):
    try:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    except ImportError:
        return builtin_resnet(name)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv, ResNet v1.5)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def builtin_resnet(name):
    layers = {"resnet50": [3, 4, 6, 3], "resnet152": [3, 8, 36, 3]}[name]
    mods = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    inplanes = 64
    for i, (planes, n) in enumerate(zip([64, 128, 256, 512], layers)):
        stride = 1 if i == 0 else 2
        down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
        blocks = [Bottleneck(inplanes, planes, stride, down)]
        inplanes = planes * 4
        blocks += [Bottleneck(inplanes, planes) for _ in range(n - 1)]
        mods.append(nn.Sequential(*blocks))
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*mods)


def timed(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--models", default="resnet50,resnet152")
    p.add_argument("--batches", default="32,128")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--csv")
    p.add_argument("--tf32", action="store_true", help="allow TF32 (PyTorch's default for cuDNN convs)")
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()

    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    dev = torch.device("cuda", 0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name(0)}, tf32={a.tf32}, channels_last={a.channels_last}")

    out = open(a.csv, "w") if a.csv else None
    if out:
        out.write("model,batch,mode,ms,images_per_s\n")
    print(f"{'model':<10} {'batch':>5} {'mode':<6} {'ms':>10} {'images/s':>10}")
    for name in a.models.split(","):
        for batch in [int(b) for b in a.batches.split(",")]:
            for mode in a.modes.split(","):
                torch.manual_seed(0)
                model = torchvision_resnet(name).to(dev, memory_format=fmt)
                x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=fmt)
                try:
                    if mode == "infer":
                        model.eval()

                        def step():
                            with torch.no_grad():
                                model(x)
                    else:
                        model.train()
                        y = torch.tensor([(i * 7919) % 1000 for i in range(batch)], device=dev)
                        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                        loss_fn = nn.CrossEntropyLoss()

                        def step():
                            opt.zero_grad(set_to_none=False)
                            loss_fn(model(x), y).backward()
                            opt.step()

                    ms = timed(step, a.runs, a.warmup)
                    ips = batch / (ms / 1e3)
                    print(f"{name:<10} {batch:>5} {mode:<6} {ms:>10.1f} {ips:>10.1f}")
                    if out:
                        out.write(f"{name},{batch},{mode},{ms:.3f},{ips:.1f}\n")
                except torch.cuda.OutOfMemoryError:
                    print(f"{name:<10} {batch:>5} {mode:<6} {'OOM':>10}")
                del model, x
                torch.cuda.empty_cache()
    if out:
        out.close()


if __name__ == "__main__":
    main()
