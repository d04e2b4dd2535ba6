"""Independent PyTorch run of the degradation experiment, on the exact batches our example used.

Trains the ResNet paper's CIFAR networks (plain-N and ResNet-N with option-A shortcuts), written
here from the paper and torchvision's conventions, not from our code: torchvision's fan-out
Kaiming normal conv init, batch norm with weight 1 and bias 0, PyTorch's default Linear init,
SGD with momentum 0.9, L2 weight decay 1e-4, and the same linear warm-up and batch order as
`examples/degradation.rs`. Its purpose is to tell the dynamics of the task and hyperparameters
(which PyTorch reproduces) from a defect of our stack (which it would not).

    cargo run --release --example degradation -- --depths "" --export-data out/degradation-data
    .venv-ref/bin/python scripts/reference/degradation_torch.py out/degradation-data \\
        [--depths 20,56,110] [--steps 300] [--batch 16] [--lr 0.005] [--warmup 30] [--seeds 0,1,2] [--kinds plain,residual]

The export writes every training image the run would use (`--steps x --batch`); export with the
`--steps` and `--batch` you train with here. Initial weights differ from ours (another RNG), so
several seeds are run: what matters is whether the curves agree in kind, not step by step.
With `--init-from DIR` (the export directory) each network instead starts from the initial
weights our example exported, so both implementations start from the same point; float
differences still make long trajectories drift apart.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, planes, stride, residual):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = residual
        self.stride = stride
        self.pad = planes - cin

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            # Option A: subsample spatially, zero-pad the new channels (split evenly, as in the
            # common CIFAR implementations; which channels are zero does not change the math).
            shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
            if self.pad:
                shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            out = out + shortcut
        return F.relu(out)


class CifarNet(nn.Module):
    def __init__(self, depth, residual):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        # Named layer1..layer3 like torchvision (and our zoo), so the state_dict keys match ours.
        cin = 16
        for stage, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(Block(cin, planes, stride if i == 0 else 1, residual))
                cin = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def load(directory, split):
    images = np.fromfile(directory / f"{split}_images.f32", dtype="<f4").reshape(-1, 3, 32, 32)
    labels = np.fromfile(directory / f"{split}_labels.u8", dtype=np.uint8).astype(np.int64)
    if len(images) != len(labels):
        raise SystemExit(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
    return torch.from_numpy(images), torch.from_numpy(labels)


def read_safetensors(path):
    """The tensors of a safetensors file (8-byte header length, JSON header, raw data), by name."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    dtypes = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}  # I64: num_batches_tracked
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        array = np.frombuffer(raw[8 + header_len + lo : 8 + header_len + hi], dtype=dtypes[info["dtype"]])
        tensors[name] = torch.from_numpy(array.reshape(info["shape"]).copy())
    return tensors


def net_name(depth, residual):
    """The zoo's name of the network, as in our example's tables and exported files."""
    return f"{'ResNet' if residual else 'PlainNet'}{depth}"


def build(depth, residual, seed, init_dir):
    """The network, with our example's initial weights when `init_dir` has them, else seeded."""
    torch.manual_seed(seed)
    model = CifarNet(depth, residual)
    path = init_dir / f"{net_name(depth, residual)}_init.safetensors" if init_dir else None
    if path is None or not path.exists():
        return model, f"seed {seed}"
    state = read_safetensors(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{path}: missing {missing}, unexpected {unexpected}")
    return model, "ours"


def train(depth, residual, seed, args, data):
    (xs, ys), (xt, yt) = data
    model, init = build(depth, residual, seed, args.init_from)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    losses = []
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
        lo, hi = step * args.batch, (step + 1) * args.batch
        loss = F.cross_entropy(model(xs[lo:hi]), ys[lo:hi])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    return losses, accuracy, init


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--depths", default="20,56,110")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--init-from", type=Path, help="start from the {Name}_init.safetensors our example exported here (seeds are then ignored)")
    parser.add_argument("--kinds", default="plain,residual", help="which of plain,residual to train")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load(args.data, "train"), load(args.data, "test")
    need = args.steps * args.batch
    if len(data[0][0]) < need:
        raise SystemExit(f"{args.data}: {len(data[0][0])} training images, {need} needed; export with the same --steps and --batch")
    width = max(1, args.steps // 10)
    ends = sorted({max(width, args.steps * k // 5) for k in range(1, 6)} | {width})
    print(f"PyTorch {torch.__version__}; {args.steps} steps of {args.batch}, lr {args.lr}, warm-up {args.warmup}")
    print(f"training loss, mean of the {width} steps ending at step ... (chance ln 10 = {math.log(10):.3f})")
    print(f"{'network':<12}{'init':>9}" + "".join(f"{'@' + str(e):>9}" for e in ends) + "  held-out acc    time")
    for depth in (int(d) for d in args.depths.split(",")):
        for residual in (kind == "residual" for kind in args.kinds.split(",")):
            # One run per network when it starts from our weights: the seed changes nothing.
            for seed in [0] if args.init_from else [int(s) for s in args.seeds.split(",")]:
                start = time.time()
                losses, accuracy, init = train(depth, residual, seed, args, data)
                name = net_name(depth, residual)
                row = "".join(f"{np.mean(losses[e - width:e]):>9.3f}" for e in ends)
                print(f"{name:<12}{init:>9}{row}  {100 * accuracy:>11.1f}%  {time.time() - start:>5.0f} s", flush=True)


if __name__ == "__main__":
    main()
