"""The ``cnnlab`` command: models, summary, train, eval.

A user mistake prints ``error: ...`` on one line and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from cnnlab.errors import CnnlabError

EPILOG_TRAIN = """\
examples:
  cnnlab train lenet5                                    # embedded digits, 10 epochs
  cnnlab train lenet5 --data mnist --data-dir ../shared/data --epochs 20 --out runs/lenet5
  cnnlab train lenet5_modern --data fashion-mnist --data-dir DIR --lr 0.05 --lr-step 8
"""

EPILOG_SUMMARY = """\
examples:
  cnnlab summary lenet5
  cnnlab summary "C5D6p0 R P C5D16p0 R P F120 R F84 R F10" --input 1x32x32
  cnnlab summary "C11D96s4p2 LRN M3s2 C5D256 LRN M3s2 C3D384 C3D384 C3D256 M3s2 FC4096 FC4096 FC1000 S" --input 3x224x224
"""


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x224x224' (or 3,224,224) -> (3, 224, 224)."""
    parts = text.lower().replace("×", "x").replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise CnnlabError(f"--input {text!r} is not a shape: write it as CxHxW, e.g. 3x224x224") from None
    if not 2 <= len(shape) <= 4 or any(s <= 0 for s in shape):
        raise CnnlabError(f"--input {text!r}: give 2 to 4 positive sizes, C first "
                          "(CxL for text, CxHxW for images, CxTxHxW for video)")
    return shape


def _default_classes(input_shape: Sequence[int]) -> int:
    """1000 for ImageNet-size models (their published heads), 10 for small-image ones."""
    return 1000 if input_shape[-1] >= 64 else 10


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from cnnlab import models

    rows: list[dict[str, Any]] = []
    for name in models.names():
        entry = models.info(name)
        with torch.device("meta"):  # count parameters without allocating them
            model = models.create(name, num_classes=_default_classes(entry.input_shape))
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"name": name, "params": params, "input": "x".join(map(str, entry.input_shape)),
                     "section": entry.section, "summary": entry.summary,
                     "recipe": entry.recipe})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'model':<{width}}  {'params':>12}  {'input':>9}  section  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['params']:>12,}  {r['input']:>9}  {r['section']:<7}  "
              f"{r['summary']}")
    return 0


def _model_or_spec(target: str, input_shape: tuple[int, ...] | None,
                   num_classes: int | None, strict: bool = False) -> tuple[Any, tuple[int, ...]]:
    from cnnlab import models, spec

    if target in models.names():
        entry = models.info(target)
        shape = input_shape or entry.input_shape
        model = models.create(target, num_classes=num_classes or _default_classes(shape),
                              in_channels=shape[0])
        return model, shape
    if input_shape is None:
        raise CnnlabError(f"{target!r} is not a model name, so it is read as a network in the "
                          "chapter's notation, which needs --input CxHxW; run `cnnlab models` "
                          "for the model names")
    return spec.build(target, input_shape, num_classes=num_classes, strict=strict), input_shape


def cmd_summary(args: argparse.Namespace) -> int:
    from cnnlab import inspect

    shape = parse_shape(args.input) if args.input else None
    model, shape = _model_or_spec(args.target, shape, args.num_classes, args.strict)
    summary = inspect.summarize(model, shape)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.to_text())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.train import TrainConfig, train

    fields = {k: v for k, v in vars(args).items()
              if k in TrainConfig.__dataclass_fields__ and v is not None}
    config = TrainConfig.for_model(fields)
    result = train(config, progress=not args.quiet, overwrite=args.overwrite)
    print(f"test accuracy {100 * result['test_top1']:.2f}% (error {100 * result['test_error']:.2f}%)"
          f" after {config.epochs} epochs, {result['seconds']:.0f} s; run saved in {config.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cnnlab.train import evaluate_run

    metrics = evaluate_run(args.run, data=args.data, data_dir=args.data_dir, split=args.split,
                           batch_size=args.batch_size)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['data']} {metrics['split']}: top-1 accuracy {100 * metrics['top1']:.2f}% "
              f"(error {100 * (1 - metrics['top1']):.2f}%), top-5 {100 * metrics['top5']:.2f}%, "
              f"loss {metrics['loss']:.4f} on {metrics['n']:,} images")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from cnnlab import data

    folder = data.download(args.name, args.data_dir)
    print(f"{args.name} is in {folder} (checksums verified)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab", description="The convolutional networks of the chapter: list, inspect, "
        "train and evaluate them.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `cnnlab COMMAND --help` for a command's options")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="list the model zoo with parameter counts",
                       description="List every model: trainable parameters (with 1000 classes "
                       "for ImageNet-size models, 10 otherwise), default input, chapter section.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("summary", help="per-layer table: volumes, parameters, memory, "
                       "receptive field, MACs", epilog=EPILOG_SUMMARY,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="NAME|SPEC",
                   help="a model name (see `cnnlab models`) or a network in the chapter's notation")
    p.add_argument("--input", metavar="CxHxW", help="input shape (default: the model's own)")
    p.add_argument("--num-classes", type=int, help="output classes (default 10, or 1000 for "
                   "ImageNet-sized models)")
    p.add_argument("--strict", action="store_true", help="refuse a stride that does not divide "
                   "L + 2P - F exactly (exercise 3 of 8.9)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a model and save the run folder",
                       description="Train a model with SGD + momentum. Settings you leave out "
                       "come from the model's recipe (`cnnlab models --json` shows it), then "
                       "from the defaults.",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model name (see `cnnlab models`)")
    p.add_argument("--data", help="data set: digits (embedded, default), mnist, fashion-mnist, "
                   "cifar10, cifar100, or folder (ROOT/train/<class>/, ROOT/test/<class>/ "
                   "given as --data-dir ROOT)")
    p.add_argument("--data-dir", help="folder with the data files (default: $CNNLAB_DATA, "
                   "else ~/.cache/cnnlab)")
    p.add_argument("--epochs", type=int, help="passes over the training set")
    p.add_argument("--batch-size", type=int, help="mini-batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay")
    p.add_argument("--lr-step", type=int, help="epochs between learning-rate drops (0: none)")
    p.add_argument("--lr-gamma", type=float, help="factor of each drop (default 0.1)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--kernel", choices=["native", "reference"],
                   help="run on PyTorch's kernels or on the chapter's reference kernels")
    p.add_argument("--out", help="run folder (default runs/MODEL-DATA)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder's results")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run on a data set")
    p.add_argument("run", help="run folder written by `cnnlab train`")
    p.add_argument("--data", help="data set (default: the one it was trained on)")
    p.add_argument("--data-dir", help="folder with the data files")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("download", help="fetch a data set from its publisher, checksums verified")
    p.add_argument("name", choices=["mnist", "fashion-mnist", "cifar10", "cifar100"])
    p.add_argument("--data-dir", help="where to put it (default: $CNNLAB_DATA, else ~/.cache/cnnlab)")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CnnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
