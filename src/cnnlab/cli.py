"""The ``cnnlab`` command: models, summary, train, eval, features, visualize, plot, download.

A user mistake prints ``error: ...`` on one line and exits with status 2; no traceback. An
operating-system failure that no command explained (a full disk, a missing folder) prints
``error: cnnlab COMMAND failed: PATH: REASON; what to do`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import select
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from cnnlab.errors import CnnlabError

# modules whose add_parser(subparsers) adds a command of theirs, in the order `--help` lists them
COMMANDS = ("cnnlab.visualize.command", "cnnlab.apps.retrieval_command", "cnnlab.data.make",
            "cnnlab.apps.detect", "cnnlab.train.curve")

# {...}: filled in from the config, the data registry and the models' recipes (build_parser)
EPILOG_TRAIN = """\
examples:
  cnnlab train lenet5                                    # {lenet5}
  cnnlab train lenet5 --data mnist --data-dir ../shared/data --epochs 20 --out runs/lenet5
  cnnlab train lenet5_modern --data fashion-mnist --data-dir DIR --lr 0.05 --lr-step 8
  cnnlab train lenet5_modern --augment translate2 --schedule onecycle --epochs 10
  cnnlab train alexnet_cifar --data cifar10 --augment crop4,flip,pca --schedule plateau
  cnnlab train lenet5_modern --checkpoint-every 200 --out runs/a    # killed? then:
  cnnlab train --resume runs/a                                      # continues to the bit
  cnnlab train lenet5_modern --out runs/a --resume auto   # start, continue or nothing: rerun it
  cnnlab train kim_cnn_rand --data mr --data-dir ../shared/data/mr --folds 10 --out runs/mr
                                     # 10-fold cross-validation: runs/mr/fold-01..10, summary.json

--augment (8.3.4), applied to each training batch:
{augment}

--resume RUN continues RUN from its last checkpoint with RUN/config.json's settings; only
{resumable} may change.
"""

EPILOG_SUMMARY = """\
examples:
  cnnlab summary lenet5
  cnnlab summary kim_cnn_onehot                         # one-hot words: 22.5 M first-layer weights
  cnnlab summary kim_cnn_rand --arg embed_dim=50        # a builder argument: 50-d embeddings
  cnnlab summary c3d --input 3x16x112x112               # a clip: C x T x H x W
  cnnlab summary "C5D6p0 R P C5D16p0 R P F120 R F84 R F10" --input 1x32x32
  cnnlab summary "C11D96s4p2 LRN M3s2 C5D256 LRN M3s2 C3D384 C3D384 C3D256 M3s2 FC4096 FC4096 FC1000 S" --input 3x224x224
"""


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x224x224' (or 3,224,224) -> (3, 224, 224)."""
    from cnnlab.ops._shapes import MAX_SIZE

    shown = text if len(text) <= 40 else f"{text[:36]}..."
    parts = text.lower().replace("×", "x").replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise CnnlabError(f"--input {shown!r} is not a shape: write sizes joined by x, e.g. "
                          "3x224x224 (or 56, a text model's sentence length)") from None
    if not 1 <= len(shape) <= 4 or any(s <= 0 for s in shape):
        raise CnnlabError(f"--input {shown!r}: give 1 to 4 positive sizes: L (the token ids "
                          "of a sentence), or C first: CxL, CxHxW (images), CxTxHxW (video)")
    if max(shape) > MAX_SIZE:
        raise CnnlabError(f"--input {shown!r}: {max(shape)} is above {MAX_SIZE:,}, the largest "
                          "size a kernel takes; give a smaller input")
    return shape


def cmd_models(args: argparse.Namespace) -> int:
    from cnnlab import models

    rows: list[dict[str, Any]] = []
    for name in models.names():
        entry = models.info(name)
        model = entry.meta_model    # counts parameters without allocating them
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        shape = entry.input_shape
        rows.append({"name": name, "params": params, "input": "x".join(map(str, shape)),
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


def parse_args_list(items: Sequence[str]) -> dict[str, Any]:
    """``["embed_dim=50", "batch_norm=false"]`` -> ``{"embed_dim": 50, "batch_norm": False}``:
    a number, true/false, or the text itself."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CnnlabError(f"--arg {item!r}: give KEY=VALUE, e.g. --arg embed_dim=50")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        out[key.strip()] = value
    return out


def _model_or_spec(target: str, input_shape: tuple[int, ...] | None,
                   num_classes: int | None, strict: bool = False,
                   builder_args: dict[str, Any] | None = None) -> tuple[Any, tuple[int, ...]]:
    """The model, on the meta device (shapes and counts, no memory), and its input shape."""
    import torch

    from cnnlab import models, spec

    if target in models.names():
        entry = models.info(target)
        # a text model takes no channel count: its shape is (L,) token ids
        channels = ({"in_channels": input_shape[0]} if input_shape is not None
                    and len(input_shape) > 1 and "in_channels" in entry.arguments() else {})
        with torch.device("meta"):
            model = models.create(target, num_classes=num_classes,
                                  **{**channels, **(builder_args or {})})
        # the built model's own input unless told: builder arguments may change it
        return model, input_shape or tuple(model.default_input_shape)
    if builder_args:
        raise CnnlabError(f"--arg goes to a model's builder, but {target!r} is not a model "
                          "name; drop --arg, or run `cnnlab models` for the names")
    if input_shape is None:
        raise CnnlabError(f"{target!r} is not a model name, so it is read as a network in the "
                          "chapter's notation, which needs --input CxHxW; run `cnnlab models` "
                          "for the model names")
    with torch.device("meta"):      # build() checks the sizes from the text first
        net = spec.build(target, input_shape, num_classes=num_classes, strict=strict)
    return net, input_shape


def cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from cnnlab import inspect

    shape = parse_shape(args.input) if args.input else None
    model, shape = _model_or_spec(args.target, shape, args.num_classes, args.strict,
                                  parse_args_list(args.arg))
    with torch.device("meta"):      # shapes and counts only: nothing is allocated
        summary = inspect.summarize(model, shape)
    name = args.target if len(args.target) <= 40 else f"{args.target[:36]}..."
    summary.check_size(f"{name!r} on input {'x'.join(map(str, shape))}")
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.to_text())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.train import TrainConfig, resume_config, train
    from cnnlab.train.checkpoint import check_finished
    from cnnlab.train.config import COMMAND_LINE
    from cnnlab.train.run import run_status

    fields = {k: v for k, v in vars(args).items()
              if k in TrainConfig.__dataclass_fields__ and v is not None}
    resume = args.resume
    if resume == "auto":                # start, continue or leave alone: a scheduler's rerun
        if args.out is None:
            raise CnnlabError("--resume auto needs --out RUN, the folder to start, continue, "
                              "or leave as it is once finished: e.g. `cnnlab train lenet5 "
                              "--out runs/a --resume auto`")
        if args.overwrite:
            raise CnnlabError("--resume auto and --overwrite contradict each other: --resume "
                              "auto keeps what RUN holds, --overwrite starts it again; pick one")
        resume = args.out if run_status(args.out) in ("unfinished", "finished") else None
    elif resume and args.out is not None and os.path.abspath(args.out) != os.path.abspath(resume):
        raise CnnlabError(f"--resume {resume} continues the run where it is, in {resume}; drop "
                          f"--out {args.out} (to continue it elsewhere, copy the folder there "
                          "and resume the copy)")
    if resume:
        config = resume_config(resume, **fields)        # train() refuses other changes
        if run_status(resume) == "finished" and not args.overwrite:
            note = check_finished(resume, config)     # or refuses a longer run
            if os.environ.get("RANK", "0") in ("", "0"):
                print(note)
            return 0
    elif args.model is None:
        raise CnnlabError("cnnlab train needs a model name (see `cnnlab models`), or "
                          "--resume RUN to continue a run")
    else:
        config = TrainConfig.for_model(fields, source=COMMAND_LINE)
    if config.folds > 1:                # k-fold cross-validation: K runs in one folder
        from cnnlab.train.series import cross_validate

        result = cross_validate(config, progress=not args.quiet, overwrite=args.overwrite,
                                resume="auto" if args.resume == "auto" else bool(resume))
    else:
        result = train(config, progress=not args.quiet, overwrite=args.overwrite,
                       resume=bool(resume))
    if os.environ.get("RANK", "0") not in ("", "0"):
        return 0                                        # torchrun: rank 0 reports
    # the task's one line: classification's "test accuracy X% (error Y%)"
    print(f"{result['summary']} after {config.epochs} epochs, {result['seconds']:.0f} s; run saved in "
          f"{result['run_dir']}")
    return 0


EPILOG_EVAL = """\
examples:
  cnnlab eval runs/lenet5                                # its own test split
  cnnlab eval runs/lenet5 --data mnist --data-dir DIR --split train --json
  cnnlab eval runs/a runs/b runs/c                       # each run, and their ensemble (8.4.1)
  cnnlab eval runs/cifar-a runs/cifar-b --tta crops      # ten views of each image (AlexNet)
"""

EPILOG_FEATURES = """\
examples:
  cnnlab features runs/lenet5 --out feats/digits-test.safetensors          # FC7 (penultimate)
  cnnlab features runs/vgg --data cifar10 --data-dir DIR --split train --layer conv5_3 \\
      --pool avg --out feats/cifar-train.safetensors
  # in Python: features, labels, meta = cnnlab.train.transfer.load_features(PATH)
"""


def cmd_eval(args: argparse.Namespace) -> int:
    from cnnlab.train.ensemble import evaluate_ensemble
    from cnnlab.train.tasks import task_class

    if args.text is not None:           # one sentence through a text run (8.6.4)
        return _eval_text(args)
    _warn_folds(args.runs, args.split)
    # one path: a single run is an ensemble of one, its row what it reports alone
    result = evaluate_ensemble(args.runs, data=args.data, data_dir=args.data_dir,
                               split=args.split, batch_size=args.batch_size, tta=args.tta,
                               crop_padding=args.crop_padding, progress=not args.quiet)
    _warn_mirrors(result["data"], args.tta)
    if len(args.runs) == 1 and args.tta == "none":
        m = {**result["members"][0], "data": result["data"], "split": result["split"]}
        print(json.dumps(m, indent=2) if args.json else
              f"{m['data']} {m['split']}: {task_class(result['task']).describe(m)} on "
              f"{m['n']:,} examples")
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_ensemble_table(result) if result["task"] == "classification"
              else _figures_table(result))
    return 0


def _warn_folds(runs: Sequence[str], split: str) -> None:
    """A note for each run that is a fold of a cross-validation: the data set's own splits
    were joined and re-dealt for it, so its training data overlaps either split."""
    from cnnlab.train.series import governs

    for run in runs:
        part = governs(run)
        if part is not None and part[1] is not None:
            print(f"note: {run} is {part[1]} of the cross-validation in {part[0]}, trained on "
                  f"most of the data set's {split} split too; its own test figures are in "
                  f"{part[0] / 'summary.json'}", file=sys.stderr)


def _eval_text(args: argparse.Namespace) -> int:
    """``cnnlab eval RUN --text "..."``: the class probabilities of one sentence, tokenised
    with the vocabulary saved with the run's weights."""
    from cnnlab.data.text import predict_text

    if len(args.runs) != 1:
        raise CnnlabError(f"--text classifies a sentence with one run, got {len(args.runs)}; "
                          "pass a single RUN")
    probs = predict_text(args.runs[0], args.text)
    if args.json:
        print(json.dumps(probs, indent=2))
    else:
        width = max(map(len, probs))
        for name, p in sorted(probs.items(), key=lambda kv: -kv[1]):
            print(f"{name:<{width}}  {100 * p:6.2f}%")
    return 0


def _warn_mirrors(data: str, tta: str) -> None:
    """8.3.4: mirrors suit some data sets only; say so when they are used on another."""
    from cnnlab.data.augment import DEFAULTS, HorizontalFlip

    trained = DEFAULTS.get(data)
    if tta != "none" and trained and not any(isinstance(t, HorizontalFlip) for t in trained):
        print(f"note: --tta {tta} averages over mirror images, which {data} is not augmented "
              "with (8.3.4: a mirrored digit is no digit); expect lower accuracy",
              file=sys.stderr)


def _ensemble_table(result: dict[str, Any]) -> str:
    rows = [(m["run"], m["model"], m) for m in result["members"]]
    if len(rows) > 1:
        rows.append((f"ensemble of {len(rows)}", "softmax mean", result["ensemble"]))
    w_run = max(len("run"), *(len(r[0]) for r in rows))
    w_model = max(len("model"), *(len(r[1]) for r in rows))
    title = (f"{result['data']} {result['split']}, {result['n']:,} examples, test-time views: "
             f"{result['tta']}")
    header = (f"{'run':<{w_run}}  {'model':<{w_model}}  {'top-1':>7}  {'top-5':>7}  "
              f"{'error':>7}  {'loss':>7}")
    lines = [title, header]
    for run, model, m in rows:
        lines.append(f"{run:<{w_run}}  {model:<{w_model}}  {100 * m['top1']:>6.2f}%  "
                     f"{100 * m['top5']:>6.2f}%  {100 * m['error']:>6.2f}%  {m['loss']:>7.4f}")
    return "\n".join(lines)


def _figures_table(result: dict[str, Any]) -> str:
    """:func:`_ensemble_table` for another task than classification: a column per headline
    figure of the task (autoencoders: mse, psnr, loss)."""
    rows = [(m["run"], m["model"], m) for m in result["members"]]
    if len(rows) > 1:
        rows.append((f"ensemble of {len(rows)}", "mean output", result["ensemble"]))
    keys = [k for k in result["members"][0] if k not in ("run", "model", "n")]
    w_run = max(len("run"), *(len(r[0]) for r in rows))
    w_model = max(len("model"), *(len(r[1]) for r in rows))
    lines = [f"{result['data']} {result['split']}, {result['n']:,} images",
             f"{'run':<{w_run}}  {'model':<{w_model}}  " + "  ".join(f"{k:>9}" for k in keys)]
    for run, model, m in rows:
        lines.append(f"{run:<{w_run}}  {model:<{w_model}}  "
                     + "  ".join(f"{m[k]:>9.4g}" for k in keys))
    return "\n".join(lines)


def cmd_features(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.train._runs import run_info
    from cnnlab.train.transfer import features_of_run, features_path, save_features

    if args.out is None:                    # into the run folder, named by what it holds
        data = args.data if args.data not in (None, run_info(args.run).config.data) else None
        out = features_path(args.run, args.split, args.layer, data, args.pool)
    else:
        out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CnnlabError(f"--out {args.out!r}: features are written as safetensors; end the "
                          "name with .safetensors")
    if out.exists() and not args.overwrite:
        raise CnnlabError(f"{'--out ' if args.out else ''}{str(out)!r} already exists; pick "
                          "another --out, or pass --overwrite to replace it")
    features, labels, meta = features_of_run(args.run, data=args.data, data_dir=args.data_dir,
                                             split=args.split, layer=args.layer, pool=args.pool,
                                             batch_size=args.batch_size,
                                             progress=not args.quiet)
    save_features(out, features, labels, meta)
    n, d = features.shape
    print(f"{n:,} x {d:,} features ({meta['model']} at {args.layer} on {meta['data']} "
          f"{meta['split']}) written to {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from cnnlab.train.plots import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from cnnlab import data

    folder = data.download(args.name, args.data_dir)
    print(f"{args.name} is in {folder} (checksums verified)")
    return 0


def add_settings(p: argparse.ArgumentParser, model_note: str = "; not needed with --resume"
                 ) -> None:
    """``cnnlab train``'s options, one per :class:`TrainConfig` field, from the field's own
    :class:`~cnnlab.train.config.Setting`. An option not given is None, so that the model's
    recipe, then the field's default, applies; the config checks the values (with near
    matches for the choices), so the parser leaves choices to it. ``model_note`` ends the
    model argument's help (another command built on training says its own)."""
    from cnnlab import models
    from cnnlab.train.config import SETTINGS

    recipes = {name: models.info(name).recipe for name in models.names()}
    for s in SETTINGS.values():
        given = {m: r[s.name] for m, r in recipes.items() if s.name in r}
        help_ = _setting_help(s.help, None if s.name == "model" else s.default, given)
        help_ = help_.replace("%", "%%")                     # argparse %-formats help
        if s.name == "model":
            p.add_argument("model", nargs="?", help=help_ + model_note)
        elif s.kind is bool:
            p.add_argument(s.flag, action=argparse.BooleanOptionalAction, help=help_)
        else:
            choices = "{" + ",".join(s.choices) + "}" if s.choices else None
            p.add_argument(s.flag, type=s.kind, metavar=s.metavar or choices, help=help_)


def _setting_help(text: str, default: Any, recipes: dict[str, Any]) -> str:
    """``text (default D; what the models' recipes give instead)``."""
    notes = []
    if default is not None:
        shown = ("on" if default else "off") if isinstance(default, bool) else default
        notes.append(f"default {shown}")
    if 0 < len(recipes) <= 3:
        notes.append("recipes: " + ", ".join(f"{m} {v}" for m, v in recipes.items()))
    elif recipes:
        notes.append(f"the recipes of {len(recipes)} models set their own: "
                     "`cnnlab models --json`")
    return f"{text} ({'; '.join(notes)})" if notes else text


def _train_epilog() -> str:
    import re
    import textwrap

    from cnnlab import data
    from cnnlab.train import augmentation
    from cnnlab.train.checkpoint import RESUMABLE
    from cnnlab.train.config import SETTINGS, TrainConfig

    lenet5 = TrainConfig.for_model({"model": "lenet5"})
    where = "embedded " if data.info(lenet5.data).embedded else ""
    grammar = re.search(r"::\n\n(.*?)\n\n(?=\S)", augmentation.__doc__ or "", re.DOTALL)
    return EPILOG_TRAIN.format(
        lenet5=f"{where}{lenet5.data}, {lenet5.epochs} epochs (its recipe)",
        augment=textwrap.indent(textwrap.dedent(grammar.group(1) if grammar else ""), "  "),
        resumable=", ".join(SETTINGS[k].flag for k in RESUMABLE if k != "out"))


def _add_run_data(p: argparse.ArgumentParser, whose: str) -> None:
    """The data options of a command that reads trained runs (eval, features)."""
    from cnnlab.data import SPLITS
    from cnnlab.train.config import SETTINGS

    batch = SETTINGS["eval_batch_size"].default
    p.add_argument("--data", help=f"data set (default: the one {whose} trained on)")
    p.add_argument("--data-dir", help="folder with the data files")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--batch-size", type=int, default=batch,
                   help=f"images per batch (default {batch})")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what is wrong and where the options are), not the
    command's whole usage first; every sub-command's parser is one of these."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    import typing

    from cnnlab import data
    from cnnlab.train.ensemble import TTA
    from cnnlab.train.transfer import Pool

    parser = _Parser(
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
    p.add_argument("--input", metavar="SHAPE",
                   help="input shape: CxHxW (images), CxTxHxW (clips), L (a text model's "
                        "token ids) (default: the model's own)")
    p.add_argument("--num-classes", type=int, help="output classes (default 10, or 1000 for "
                   "ImageNet-sized models)")
    p.add_argument("--strict", action="store_true", help="refuse a stride that does not divide "
                   "L + 2P - F exactly (exercise 3 of 8.9)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the model's builder (repeatable), e.g. embed_dim=50; "
                   "VALUE is read as a number, true/false, or text")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a model and save the run folder",
                       description="Train a model (SGD with momentum unless --optimizer says "
                       "otherwise). Settings you leave out come from the model's recipe "
                       "(`cnnlab models --json` shows it), then from the defaults.",
                       epilog=_train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p)                                     # one option per TrainConfig field
    p.add_argument("--resume", metavar="RUN|auto", help="continue the unfinished run in folder "
                   "RUN from its last checkpoint (a finished RUN: nothing to do); auto, with "
                   "--out RUN: start RUN, continue it, or leave it if finished (for schedulers)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder's results")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate trained runs, alone and as an ensemble",
                       description="Evaluate a run on a data set (default: the one it was "
                       "trained on), sized and normalised as in training. With several runs: "
                       "each run and their ensemble, which averages their softmax outputs "
                       "(8.4.1).", epilog=EPILOG_EVAL,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder written by `cnnlab train`")
    _add_run_data(p, "the runs were")
    p.add_argument("--tta", choices=TTA, default="none",
                   help="test-time views averaged per image: the image and its mirror (flip), "
                   "or AlexNet's ten crops of the image zero-padded by --crop-padding (crops)")
    p.add_argument("--crop-padding", type=int, metavar="PIXELS",
                   help="padding per side for --tta crops (default: 1/8 of the image height)")
    p.add_argument("--text", metavar="SENTENCE", help="a text run: print the class "
                   "probabilities of this sentence (Kim's tokenisation, the run's vocabulary) "
                   "instead of evaluating a data set")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("features", help="FC7 features of a data set from a trained run, to a "
                       "file", description="Pass a data set through a trained run and save one "
                       "feature vector per image (8.4.1, 8.4.7): by default the penultimate "
                       "layer's, the \"FC7 features\", whatever the depth. Images are sized and "
                       "normalised as in training. The file holds `features` (N x D, float32) "
                       "and `labels` (N), with the model, layer, data and split as metadata.",
                       epilog=EPILOG_FEATURES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder written by `cnnlab train`")
    _add_run_data(p, "the run was")
    p.add_argument("--layer", default="fc7", help="fc7 (default: the penultimate layer), or a "
                   "chapter layer name (conv3, c5, ...) or module path")
    p.add_argument("--pool", choices=typing.get_args(Pool), default="flatten",
                   help="a spatial volume C x H x W: all C*H*W values (flatten), or the mean of "
                   "each map (avg)")
    p.add_argument("--out", metavar="FILE.safetensors", help="where to write (default: "
                   "RUN/features-SPLIT-LAYER.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("plot", help="redraw a run's curves.png and confusion.png",
                       description="Draw RUN/curves.png (loss, top-1/top-5 error and learning "
                       "rate per epoch) and RUN/confusion.png (the last evaluation's confusion "
                       "matrix, rows normalised) from the run's metrics.jsonl and "
                       "confusion.json. `cnnlab train` draws them at the end already.")
    p.add_argument("run", help="run folder written by `cnnlab train`")
    p.set_defaults(func=cmd_plot)

    for module in COMMANDS:             # commands that live beside their code
        importlib.import_module(module).add_parser(sub)
    p = sub.add_parser("download", help="fetch a data set from its publisher, checksums verified")
    p.add_argument("name", choices=[n for n in data.names() if not data.info(n).embedded])
    p.add_argument("--data-dir", help="where to put it (default: $CNNLAB_DATA, else ~/.cache/cnnlab)")
    p.set_defaults(func=cmd_download)
    return parser


def run() -> None:
    """The ``cnnlab`` program: :func:`main` on the command line, then the exit (under
    torchrun, one that cannot hang: :func:`cnnlab.train.distributed.exit_process`)."""
    code = main()
    from cnnlab.train.distributed import exit_process

    exit_process(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_dash_values(parser, sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args))
    except CnnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as err:
        if _reader_left(sys.stdout):
            # `cnnlab models | head`: nothing more to say; exit 1 as Python's docs advise, and
            # point stdout away so that the interpreter's own flush at exit stays quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        print(f"error: {err}", file=sys.stderr)       # another pipe: a one-line error
        return 1
    except OSError as err:        # the safety net: what a command did not turn into its own
        print(f"error: {_os_failure(args.command, err)}", file=sys.stderr)
        return 1


def _attach_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--input -1x2x3`` -> ``--input=-1x2x3``: argparse reads a value that starts with '-'
    as an option and reports a missing argument; attached, it reaches the option's own check.
    Only for options that take one value, and not when the next word is an option itself."""
    argv = list(argv)
    command = next((w for w in argv if not w.startswith("-")), None)
    sub = next((a.choices.get(command) for a in parser._actions
                if isinstance(a, argparse._SubParsersAction) and command), None)
    if sub is None:
        return argv
    known = {o for a in sub._actions for o in a.option_strings}
    takes_one = {o for a in sub._actions if a.nargs is None for o in a.option_strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        word, nxt = argv[i], (argv[i + 1] if i + 1 < len(argv) else "")
        if word == "--":                                   # the rest are positionals
            return out + argv[i:]
        if word in takes_one and nxt[:1] == "-" and nxt[:2] != "--" and nxt not in known:
            out.append(f"{word}={nxt}")
            i += 2
        else:
            out.append(word)
            i += 1
    return out


# errno -> what to do, for the one-line report of an OSError no command explained
_OS_FIXES = {
    errno.ENOSPC: "free some disk space and run the command again",
    errno.EDQUOT: "free some of your disk quota and run the command again",
    errno.EACCES: "check its permissions, or use another path",
    errno.EPERM: "check its permissions, or use another path",
    errno.EROFS: "it is on a read-only file system: use another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path: a part of it is a file",
    errno.EISDIR: "check the path: it is a folder",
}


def _os_failure(command: str, err: OSError) -> str:
    """``cnnlab COMMAND failed: PATH: STRERROR; what to do`` on one line."""
    path = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
    parts = [f"cnnlab {command} failed", *([str(path)] if err.filename is not None else []),
             err.strerror or str(err) or type(err).__name__]
    fix = _OS_FIXES.get(err.errno) if err.errno is not None else None
    return ": ".join(parts).replace("\n", " ") + (f"; {fix}" if fix else "")


def _reader_left(stream: Any) -> bool:
    """True when ``stream`` is a pipe whose reading end is closed (POLLERR on Linux)."""
    try:
        poll = select.poll()
        poll.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
