#!/usr/bin/env python3
"""A checkpoint written by `residual` loads into torchvision strictly and computes the same logits.

Reads what `cargo run --release --example save_checkpoint -- --out DIR` wrote:
  DIR/resnet18.safetensors     a ResNet-18 trained a few steps by this crate, saved by
                               residual::io::save_safetensors
  DIR/resnet18_io.safetensors  an input batch and the eval-mode logits this crate computed for it
checks its keys and dtypes against torchvision's own state_dict, loads it into
`torchvision.models.resnet18()` with `load_state_dict(strict=True)`, runs torchvision's eval forward on the
input, and compares the logits. Exits non-zero on any failure.

Run (needs torch, torchvision and safetensors; scripts/setup_reference.sh installs them):
  cargo run --release --example save_checkpoint
  .venv-ref/bin/python scripts/reference/roundtrip_torchvision.py out/checkpoint
"""
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/checkpoint")
    state = load_file(out / "resnet18.safetensors")
    io = load_file(out / "resnet18_io.safetensors")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"{out / 'resnet18.safetensors'}: {len(state)} tensors")

    model = torchvision.models.resnet18()
    reference = model.state_dict()
    # strict=True alone would not catch missing counters: a plain dict (what load_file returns)
    # has no `_metadata`, and BatchNorm then treats it as a pre-1.0 state_dict and fills in
    # `num_batches_tracked` itself. So the key sets are compared first.
    missing, unexpected = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
    if missing or unexpected:
        sys.exit(f"keys differ from torchvision's state_dict: missing {missing[:10]}, unexpected {unexpected[:10]}")
    print(f"keys: the same {len(reference)} as torchvision's state_dict")
    wrong_dtypes = [k for k, v in state.items() if v.dtype != reference[k].dtype]
    if wrong_dtypes:
        sys.exit(f"dtypes differ from torchvision's: {wrong_dtypes[:10]}")
    print("dtypes: torchvision's (float32, int64 for num_batches_tracked)")
    result = model.load_state_dict(state, strict=True)  # raises on a missing or unexpected key
    print(f"load_state_dict(strict=True): {result}")

    model.eval()
    torch.set_num_threads(2)
    with torch.no_grad():
        logits = model(io["input"])
    ours = io["logits"]
    diff = (logits - ours).abs().max().item()
    scale = ours.abs().max().item()
    same_top1 = bool((logits.argmax(1) == ours.argmax(1)).all())
    print(f"logits {tuple(logits.shape)}: max |torchvision - residual| = {diff:.3e} (max |logit| = {scale:.3f}), "
          f"same top-1: {same_top1}")
    if not diff <= 1e-4 * max(1.0, scale):
        sys.exit("logits differ")
    print("ok")


if __name__ == "__main__":
    main()
