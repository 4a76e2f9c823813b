"""Write tests/fixtures/torchvision_models.json: for each torchvision model that cnnlab also
builds, its state_dict in order (name, shape, parameter or buffer) and its parameter count.

Run once, in a throwaway environment that has torchvision (cnnlab does not depend on it):

    python3 -m venv /tmp/tvvenv && /tmp/tvvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tvvenv/bin/python tools/make_torchvision_fixture.py

Models are built with ``weights=None`` on the meta device, so nothing is allocated or
downloaded. The tests compare cnnlab's torchvision-layout models against this file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision import models as tvm

# name -> builder keyword arguments (beyond weights=None)
MODELS: dict[str, dict[str, Any]] = {
    "alexnet": {},
    **{f"vgg{d}{bn}": {} for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    # torchvision's GoogLeNet without the auxiliary heads is the 6,624,904-parameter model
    "googlenet": {"aux_logits": False, "init_weights": False},
    **{f"resnet{d}": {} for d in (18, 34, 50, 101, 152)},
    **{name: {} for name in ("wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d",
                             "resnext101_32x8d", "resnext101_64x4d")},
    **{f"densenet{d}": {} for d in (121, 169, 201)},
}

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "torchvision_models.json"


def describe(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    with torch.device("meta"):
        model = tvm.get_model(name, weights=None, **kwargs)
    params = dict(model.named_parameters())
    entries = [[key, list(t.shape), "param" if key in params else "buffer"]
               for key, t in model.state_dict().items()]
    return {"kwargs": kwargs, "num_params": sum(p.numel() for p in params.values()),
            "state_dict": entries}


def dump(doc: dict[str, Any]) -> str:
    """Indented JSON with one state_dict entry per line (readable diffs, ~1 MB less)."""
    lines = ["{"]
    for key in ("generated_by", "torch", "torchvision", "note"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(doc[key])},")
    lines.append('  "models": {')
    names = sorted(doc["models"])
    for i, name in enumerate(names):
        m = doc["models"][name]
        lines.append(f"    {json.dumps(name)}: {{")
        lines.append(f'      "kwargs": {json.dumps(m["kwargs"], sort_keys=True)},')
        lines.append(f'      "num_params": {m["num_params"]},')
        lines.append('      "state_dict": [')
        rows = [f"        {json.dumps(e)}" for e in m["state_dict"]]
        lines.append(",\n".join(rows))
        lines.append("      ]")
        lines.append("    }" + ("," if i < len(names) - 1 else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    doc = {
        "generated_by": "tools/make_torchvision_fixture.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "note": "state_dict entries in order: [name, shape, 'param' | 'buffer']; weights=None",
        "models": {name: describe(name, kw) for name, kw in MODELS.items()},
    }
    text = dump(doc)
    assert json.loads(text) == json.loads(json.dumps(doc))   # the hand layout is valid JSON
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    for name in sorted(doc["models"]):
        print(f"{name:18s} {doc['models'][name]['num_params']:>12,}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
