#!/usr/bin/env python3
"""Fixtures from torchvision itself for the zoo's models beyond ResNet.

Writes tests/fixtures/torchvision_models.json: for each model, torchvision's `state_dict` keys and
shapes, its parameter count, and the eval-mode logits of one 3x224x224 image, with every parameter,
buffer and input value set by `hashed` (a splitmix64 hash of the tensor's key and the value's
index, mapped to [-1, 1) and scaled by the kind of tensor). tests/torchvision_models.rs computes
the same values bit for bit, so no weights are stored and the models are full size.

Regenerate (torch and torchvision from PyPI: bash scripts/setup_reference.sh):
  .venv-ref/bin/python scripts/reference/torchvision_models.py
"""
import json
import os

import numpy as np
import torch
import torchvision

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "torchvision_models.json")
MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

# Our zoo name -> torchvision constructor.
MODELS = {
    "MobileNetV2": torchvision.models.mobilenet_v2,
    "MobileNetV3Small": torchvision.models.mobilenet_v3_small,
    "EfficientNetB0": torchvision.models.efficientnet_b0,
    "DenseNet121": torchvision.models.densenet121,
    "RegNetY400MF": torchvision.models.regnet_y_400mf,
    "ConvNeXtTiny": torchvision.models.convnext_tiny,
    "ViT_B_16": torchvision.models.vit_b_16,
}


def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def uniform(key, n):
    """n values in [-1, 1): splitmix64's finaliser of fnv1a(key) + i * golden, top 53 bits."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a(key)) + np.arange(n, dtype=np.uint64) * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0


def hashed(key, shape):
    """The value of every element of tensor `key`, as float32 (see the module docstring)."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(key, n)
    name = key.rsplit(".", 1)[-1]
    if key == "input":
        v = u
    elif name == "running_var":
        v = 1.0 + 0.5 * (u + 1.0)
    elif name == "running_mean":
        v = 0.1 * u
    elif name == "weight" and len(shape) == 1:
        v = 1.0 + 0.1 * u
    elif name.endswith("bias"):
        # `bias`, and attention's packed `in_proj_bias`.
        v = 0.1 * u
    else:
        # A weight: uniform with variance 1 / fan_in.
        fan_in = n // shape[0]
        v = u * np.sqrt(3.0 / fan_in)
    return v.astype(np.float32).reshape(shape)


def main():
    torch.set_num_threads(2)
    out = {}
    for name, make in MODELS.items():
        model = make().eval()
        state = model.state_dict()
        filled = {}
        for key, t in state.items():
            if key.endswith("num_batches_tracked"):
                filled[key] = t
            else:
                filled[key] = torch.from_numpy(hashed(key, list(t.shape)))
        model.load_state_dict(filled, strict=True)
        x = torch.from_numpy(hashed("input", [1, 3, 224, 224]))
        with torch.inference_mode():
            logits = model(x)[0].double().tolist()
        params = sum(p.numel() for p in model.parameters())
        out[name] = {
            "torchvision": torchvision.__version__,
            "params": params,
            "state_dict": [[k, list(v.shape)] for k, v in state.items()],
            "logits": logits,
        }
        print(f"{name}: {params:,} parameters, {len(state)} state_dict entries, "
              f"max |logit| {max(abs(v) for v in logits):.4g}")
    with open(OUT, "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
