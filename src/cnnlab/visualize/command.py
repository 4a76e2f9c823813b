"""``cnnlab visualize RUN --method M``: the pictures of 8.5.1 for a trained run, as PNGs and one
self-contained ``index.html`` in ``--out`` (default ``RUN/visualize-M``).

Nothing is half-written: the pictures and the page are made in a temporary folder beside
``--out`` and moved there only once all of them exist; an existing ``--out`` that holds anything
is refused unless ``--overwrite`` (which replaces files of the same names and leaves the rest).
Images come from ``--images`` (PNG/JPEG files of the run's exact input size and channel count)
or from a data set (``--data``, by default the run's own, ``--split`` test), and are normalised
with the run's mean and std.

The CLI wires it in with ``add_parser(subparsers)``; ``run(args)`` does the work.
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, DataError, ShapeError
from cnnlab.train.tasks import Classification
from cnnlab.visualize import synthesis
from cnnlab.visualize.pictures import (
    filter_image,
    heatmap,
    rows_of,
    save_grid,
    signed_image,
    square_width,
)
from cnnlab.visualize.report import INDEX, Picture, write_report
from cnnlab.visualize.targets import (
    Probe,
    Target,
    layer_names,
    parse_target,
    select,
    target_values,
)

if typing.TYPE_CHECKING:
    from cnnlab.train._runs import RunInfo

__all__ = ["DEFAULT_CHANNELS", "DEFAULT_COUNT", "METHODS", "add_parser", "parse_channels",
           "parse_targets", "read_images", "run"]

METHODS = ("saliency", "deconvnet", "guided", "top-k", "class-images", "filters", "maps")
DEFAULT_COUNT = 8          # images drawn when --count is not given (top-k: the whole split)
DEFAULT_CHANNELS = 16      # channels of --layer shown when --channels is not given
RANKED = {True: "each image's strongest unit", False: "every unit of every image"}  # top-k
ROWS_PER_PICTURE = 8       # images per PNG of the gradient maps and feature maps
CLASSIFICATION = Classification.name

# what each method shows, for --help and the page (8.5.1)
_SIGNED = ("zero is mid-grey in colour images, white between blue (negative) and red "
           "(positive) in grey ones")
ABOUT = {
    "saliency": "Saliency (Simonyan et al.): the largest |d target / d pixel| over the colour "
                "channels, the pixels whose change moves the target most; grey, each map "
                "scaled by its own maximum.",
    "deconvnet": "Deconvnet map (Zeiler and Fergus, Fig. 8.14): the target's gradient with "
                 f"each ReLU passing back only the positive part of the gradient; {_SIGNED}.",
    "guided": "Guided backpropagation (Springenberg et al., Fig. 8.14): ReLUs pass a gradient "
              f"back only where both their input and the gradient are positive; {_SIGNED}.",
    "top-k": "Top-k patches (Zeiler and Fergus, Figs. 8.13, 8.15): the k images of the data "
             "set whose strongest unit of each channel is largest, one unit per image "
             "(--all-positions: the k strongest units over all images and positions), cropped "
             "at the neuron's receptive field, above the deconvnet reconstruction of each one "
             "activation (through the stored pool switches where the network is a chain of "
             "layers, else the unit's deconvnet-rule gradient, e.g. in a residual net).",
    "class-images": "Synthesised images (Eq. 8.4): gradient ascent on the target minus "
                    f"lambda ||x||^2 (lambda {synthesis.L2}, step {synthesis.LR}) from a zero "
                    f"image plus noise (std {synthesis.NOISE}), with jitter (up to "
                    f"{synthesis.JITTER} pixels), blur (sigma {synthesis.BLUR} every "
                    f"{synthesis.BLUR_EVERY} steps) and clipping to the data range.",
    "filters": "The first convolution's filters, each stretched from its minimum (black) to "
               "its maximum (white).",
    "maps": "Feature maps of a layer for each image, each map scaled by its own largest "
            "|value| (grey when non-negative, blue-white-red when signed).",
}

EPILOG = """\
examples:
  cnnlab visualize runs/lenet --method saliency                # predicted class, 8 test images
  cnnlab visualize runs/lenet --method guided --targets 3,7 --images a.png b.png
  cnnlab visualize runs/lenet --method deconvnet --layer c3 --channels 0,5 --count 4
  cnnlab visualize runs/lenet --method top-k --layer c3 --channels 0-7 --k 9
  cnnlab visualize runs/lenet --method class-images           # one image per class
  cnnlab visualize runs/lenet --method class-images --targets c5:3,c5:17 --steps 400
  cnnlab visualize runs/lenet --method filters
  cnnlab visualize runs/lenet --method maps --layer c1 --count 2 --out pics/c1

targets: a class (3), a channel of a layer (c3:5, its strongest unit per image) or one unit
(c3:5@4,6, row 4, column 6); separate them by commas or spaces (a target with a position
last, or spaces around it). Layers are the chapter's names (`cnnlab summary MODEL`).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``visualize`` to ``cnnlab``'s subcommands (``parser.add_subparsers()``)."""
    from cnnlab.data import SPLITS
    from cnnlab.ops import KernelName
    from cnnlab.train.config import SETTINGS

    batch = SETTINGS["eval_batch_size"].default
    p: argparse.ArgumentParser = subparsers.add_parser(
        "visualize", help="pictures of what a trained run sees: gradient maps, top-k patches, "
        "synthesised images, filters, feature maps (8.5.1)",
        description="Draw one kind of picture of a trained run (8.5.1) into --out as PNGs "
        "and one self-contained index.html.\n\n" + "\n".join(
            textwrap.fill(f"{m}: {ABOUT[m]}", 92, subsequent_indent="  ") for m in METHODS),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder written by `cnnlab train`")
    p.add_argument("--method", required=True, choices=METHODS, help="what to draw")
    p.add_argument("--layer", help="a layer (chapter name such as c3, conv5, fc7, or module "
                   "path): the channels of --channels (top-k and maps need it)")
    p.add_argument("--channels", metavar="LIST", help="channels of --layer, e.g. 0,3,5 or 0-7 "
                   f"(default: the first {DEFAULT_CHANNELS})")
    p.add_argument("--targets", nargs="+", metavar="T", help="classes and neurons to explain "
                   "or synthesise, e.g. 3,c3:5 (default: each image's predicted class; "
                   "class-images: every class)")
    p.add_argument("--images", nargs="+", metavar="PATH", help="image files of the run's "
                   "input size (instead of --data)")
    p.add_argument("--data", help="data set to take images from (default: the one the run was "
                   "trained on)")
    p.add_argument("--data-dir", help="folder with the data files")
    p.add_argument("--split", choices=SPLITS, help="split of --data (default test)")
    p.add_argument("--count", type=int, help=f"images taken from the data (default "
                   f"{DEFAULT_COUNT}; top-k: the whole split)")
    p.add_argument("--k", type=int, default=9, help="top-k: patches per channel (default 9)")
    p.add_argument("--all-positions", action="store_true", help="top-k: rank every unit of "
                   "every image, so one image may fill several places (default: each image's "
                   "strongest unit only)")
    p.add_argument("--steps", type=int, default=synthesis.STEPS,
                   help=f"class-images: gradient-ascent steps (default {synthesis.STEPS})")
    p.add_argument("--batch-size", type=int, default=batch,
                   help=f"top-k: images per batch (default {batch})")
    p.add_argument("--kernel", choices=typing.get_args(KernelName), default="native",
                   help=SETTINGS["kernel"].help)
    p.add_argument("--out", metavar="DIR", help="folder for the PNGs and index.html (default "
                   "RUN/visualize-METHOD)")
    p.add_argument("--overwrite", action="store_true", help="write into an --out that holds "
                   "files (same names are replaced, others stay)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


# -- what the command was asked ---------------------------------------------------------------

@dataclass
class Job:
    """The checked request: the run, its model and what to draw."""

    info: RunInfo
    model: nn.Module
    task: str
    method: str
    args: argparse.Namespace
    settings: dict[str, object] = field(default_factory=dict)   # shown on the page

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    def label(self, target: Target) -> str:
        """``class 'seven'`` for a class score, ``c3:5`` for a neuron."""
        if target.layer is None:
            name = self.classes[target.channel] if target.channel < len(self.classes) else ""
            return f"class {name}" if name and name != str(target.channel) else str(target)
        return str(target)


def run(args: argparse.Namespace) -> int:
    """``cnnlab visualize``: check everything, draw into a temporary folder, then publish."""
    from cnnlab import ops
    from cnnlab.train._runs import run_info
    from cnnlab.train.run import load_run

    info = run_info(args.run)
    info.check_images("cnnlab visualize")
    out = Path(args.out) if args.out else info.path / f"visualize-{args.method}"
    _check_out(out, args.overwrite, given=args.out is not None)
    _check_options(args)
    model, _ = load_run(info.path)
    if getattr(model, "default_input_shape", None) is not None:
        # what it was trained on: a fully convolutional model (an autoencoder) may have been
        # trained at another size than its default, and every method checks images against it
        typing.cast(Any, model).default_input_shape = info.input_shape
    job = Job(info, model, info.task, args.method, args)
    draw = DRAW[args.method]
    from cnnlab.train.run import staged_folder

    with ops.kernels(args.kernel), staged_folder(out, "the pictures", merge=True) as folder:
        pictures = draw(job, folder)
        facts = _facts(job)
        write_report(folder / INDEX, f"{args.method}: {info.path.name} ({info.model})",
                     pictures, facts, intro=ABOUT[args.method])
    print(f"{len(pictures)} picture{'s' * (len(pictures) != 1)} and {INDEX} written to {out}")
    return 0


def _check_out(out: Path, overwrite: bool, given: bool) -> None:
    flag = "--out " if given else ""
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"{flag}{str(out)!r} is a file, not a folder; pick another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CnnlabError(f"{flag}{str(out)!r} already holds files; pick another --out, or "
                          "pass --overwrite to replace the pictures of the same names")


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that contradict each other or the method, before any slow work."""
    method = args.method
    if args.targets and (args.layer or args.channels):
        raise CnnlabError("--targets names layers itself (c3:5); drop --layer/--channels, or "
                          "give --layer L --channels LIST instead of --targets")
    if args.channels and not args.layer:
        raise CnnlabError(f"--channels {args.channels} needs --layer: the layer they belong to")
    if method in ("top-k", "maps") and not args.layer:
        raise CnnlabError(f"--method {method} needs --layer: the layer whose channels to show")
    if method in ("top-k", "maps", "filters") and args.targets:
        raise CnnlabError(f"--method {method} takes --layer and --channels, not --targets")
    if method == "filters" and (args.layer or args.channels):
        raise CnnlabError("--method filters draws the first convolution's filters; drop "
                          "--layer/--channels (see --method maps for a layer's maps)")
    data_given = [f"--{n.replace('_', '-')}" for n in ("data", "data_dir", "split", "count")
                  if getattr(args, n) is not None]
    if args.images and data_given:
        raise CnnlabError(f"--images and {', '.join(data_given)} both name images; give "
                          "one or the other")
    if method in ("filters", "class-images") and (args.images or data_given):
        raise CnnlabError(f"--method {method} uses no images; drop "
                          f"{', '.join(['--images'] * bool(args.images) + data_given)}")
    if method == "top-k" and args.images:
        raise CnnlabError("--method top-k searches a data set (--data, --split), not "
                          "--images")
    if method != "top-k" and args.all_positions:
        raise CnnlabError(f"--all-positions ranks the units of --method top-k; drop it for "
                          f"--method {method}")
    for name in ("count", "k", "steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CnnlabError(f"--{name.replace('_', '-')} {value}: give a positive number")


def _facts(job: Job) -> dict[str, object]:
    import cnnlab

    c, h, w = job.info.input_shape
    return {"run": str(job.info.path), "model": job.info.model,
            "trained on": f"{job.info.config.data}, {c} x {h} x {w} inputs",
            "task": job.task if job.task != CLASSIFICATION
            else f"{CLASSIFICATION} ({len(job.classes)} classes)",
            "method": job.method, **job.settings, "kernel": job.args.kernel,
            "cnnlab": cnnlab.__version__}


# -- reading what to look at ------------------------------------------------------------------

def parse_channels(text: str) -> list[int]:
    """``"0,3,5"`` or ``"0-7,12"`` as a list of channel indices."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
            raise CnnlabError(f"--channels {text!r}: write channels as 0,3,5 or a range 0-7")
        out.extend(range(int(m[1]), int(m[2] or m[1]) + 1))
    return list(dict.fromkeys(out))


def parse_targets(words: Sequence[str]) -> list[Target]:
    """The words of ``--targets``, each a comma-separated list; a number right after a target
    with a position continues that position (``c3:5@4,6``)."""
    items: list[str] = []
    for word in words:
        for i, part in enumerate(p.strip() for p in word.split(",")):
            if i and part.isdigit() and items and "@" in items[-1]:
                items[-1] += f",{part}"
            elif part:
                items.append(part)
    if not items:
        raise CnnlabError("--targets is empty: name a class (3) or a neuron (c3:5)")
    return [parse_target(t) for t in items]


def _targets(job: Job, default: list[Target] | None) -> list[Target] | None:
    """``--targets``, else ``--layer``'s channels, else ``default``; class targets need a
    classifier."""
    args = job.args
    chosen: list[Target] | None
    if args.targets:
        chosen = parse_targets(args.targets)
    elif args.layer:
        chosen = [Target(args.layer, c) for c in _channels(job, args.layer)]
    else:
        chosen = default
    if chosen is not None and any(t.layer is None for t in chosen):
        _need_classes(job, "a class target")
    return chosen


def _need_classes(job: Job, what: str) -> None:
    if job.task != CLASSIFICATION:
        first = layer_names(job.model)[0]
        raise CnnlabError(f"{str(job.info.path)!r} is a {job.task} run ({job.info.model}), "
                          f"which has no class scores for {what}; pass hidden neurons instead: "
                          f"--layer L --channels LIST, or --targets {first}:0")


def _layer_output(job: Job, layer: str) -> torch.Tensor:
    """``layer``'s output for one zero input (1, C, ...): its shape, and the layer name
    checked (an unknown one lists the model's layers and the near matches)."""
    c, h, w = job.info.input_shape
    with torch.no_grad(), Probe(job.model, layer) as probe:
        job.model(torch.zeros(1, c, h, w))
    return probe.output


def _channels(job: Job, layer: str, spatial: bool = False) -> list[int]:
    """``--channels`` of ``layer`` (default: its first ones), checked against its output."""
    output = _layer_output(job, layer)
    if spatial and output.dim() != 4:
        raise ShapeError(f"layer {layer!r} gives {' x '.join(map(str, output.shape[1:]))} "
                         f"values per image, no spatial map; --method {job.method} needs a "
                         "convolution or pooling layer (see `cnnlab summary "
                         f"{job.info.model}`)")
    if job.args.channels is None:
        return list(range(min(DEFAULT_CHANNELS, output.shape[1])))
    chosen = parse_channels(job.args.channels)
    for c in chosen:
        select(output, Target(layer, c))                   # a one-line ShapeError if out
    return chosen


@dataclass(frozen=True)
class Images:
    """Model inputs (N, C, H, W), their pixels in [0, 1] and a caption for each."""

    x: torch.Tensor
    pixels: torch.Tensor
    names: list[str]


def read_images(paths: Sequence[str | os.PathLike[str]], shape: tuple[int, int, int]
                ) -> torch.Tensor:
    """Image files as pixels (N, C, H, W) in [0, 1], each of ``shape`` (C, H, W) exactly:
    8- or 16-bit grey for C = 1, RGB for C = 3 (an alpha channel is dropped, a palette
    expanded)."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        where = str(path)
        try:
            with Image.open(path) as img:
                img.load()
                picture = _as_pixels(img, where, shape)
        except FileNotFoundError:
            raise CnnlabError(f"image {where!r} does not exist; check the path") from None
        except (UnidentifiedImageError, OSError) as err:
            raise CnnlabError(f"cannot read image {where!r} ({err}); give PNG or JPEG "
                              "files") from None
        out.append(picture)
    if not out:
        raise CnnlabError("--images names no files; give at least one")
    return torch.stack(out)


def _as_pixels(img: Any, where: str, shape: tuple[int, int, int]) -> torch.Tensor:
    import numpy as np

    from cnnlab.data.folder import check_channels

    c, h, w = shape
    check_channels(img, where, c)
    if (img.height, img.width) != (h, w):
        raise ShapeError(f"image {where!r} is {img.height} x {img.width} (H x W) but the "
                         f"run's model takes {h} x {w} images; resize it to {h} x {w} first")
    if img.mode.startswith("I"):                           # 16-bit grey
        a = np.asarray(img, dtype=np.float64) / 65535.0
    else:
        a = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float64) / 255.0
    t = torch.from_numpy(a.reshape(h, w, -1).copy()).permute(2, 0, 1).float()
    return t.clamp(0.0, 1.0)                               # C x H x W


def _images(job: Job) -> Images:
    """The images to draw: ``--images`` files, or the first ``--count`` of the data set."""
    from cnnlab.train._runs import run_data
    from cnnlab.train.batches import normalizer

    args, info = job.args, job.info
    if args.images:
        pixels = read_images(args.images, info.image_shape)
        names = [Path(p).name for p in args.images]
        job.settings["images"] = ", ".join(names)
    else:
        split = args.split or "test"
        ds = run_data(info, args.data, args.data_dir, split)
        if len(ds) == 0:
            raise DataError(f"{ds.name} {split} holds no images; pick another --data or "
                            "--split")
        n = min(len(ds), args.count or DEFAULT_COUNT)
        pixels = ds.images[:n].float()
        labels = ds.labels[:n] if isinstance(ds.labels, torch.Tensor) else None
        names = [f"#{i}" + (f" {ds.classes[int(labels[i])]}" if labels is not None
                            and labels.dim() == 1 and 0 <= int(labels[i]) < len(ds.classes)
                            else "") for i in range(n)]
        job.settings["images"] = f"the first {n} of {ds.name} {split}"
    normalize = normalizer(info.mean, info.std, torch.device("cpu"))   # as in training
    return Images(normalize(pixels), pixels, names)


def _progress(job: Job, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=job.args.quiet)


# -- the methods ------------------------------------------------------------------------------

def draw_gradients(job: Job, folder: Path) -> list[Picture]:
    """Rows of images, each followed by its map for every target (default: its predicted
    class)."""
    from cnnlab.visualize.gradients import METHODS as MAPS

    images = _images(job)
    chosen = _targets(job, None)
    if chosen is None:
        _need_classes(job, "the predicted class (the default target)")
    else:
        target_values(job.model, images.x[:1], chosen)        # checks layers, channels, places
    method = MAPS[job.method]
    job.settings["targets"] = ("each image's predicted class" if chosen is None
                               else ", ".join(map(str, chosen)))
    pictures = []
    n = len(images.x)
    with _progress(job, n, job.method) as bar:
        for start in range(0, n, ROWS_PER_PICTURE):
            part = slice(start, start + ROWS_PER_PICTURE)
            x = images.x[part]
            if chosen is None:
                with torch.no_grad():
                    predicted = job.model(x).argmax(dim=1)                    # N
                classes = sorted(set(predicted.tolist()))
                targets = [Target(None, c) for c in classes]
                maps = method(job.model, x, targets)                          # N x T x ...
                pick = torch.tensor([classes.index(int(p)) for p in predicted])
                maps = maps[torch.arange(len(x)), pick].unsqueeze(1)          # N x 1 x ...
                per_image = [[targets[int(k)]] for k in pick]
            else:
                maps = method(job.model, x, chosen)
                per_image = [chosen] * len(x)
            with torch.no_grad():
                values = [target_values(job.model, x[i:i + 1], t)[0] for i, t in
                          enumerate(per_image)]
            rows, captions = [], []
            for i in range(len(x)):
                shown = heatmap(maps[i]) if maps.dim() == 4 else signed_image(maps[i])
                rows.append([images.pixels[start + i], *shown])
                captions.append([images.names[start + i], *(
                    f"{job.label(t)}: {v:.3g}" for t, v in zip(per_image[i], values[i].tolist(),
                                                              strict=True))])
            number = start // ROWS_PER_PICTURE + 1
            path = save_grid(rows, folder / f"{job.method}-{number}.png", captions=captions,
                             cell=0.9)
            pictures.append(Picture(path, f"{job.method} maps of images "
                                    f"{start + 1}-{start + len(x)} (first column: the image; "
                                    "captions: the target and its value)"))
            bar.update(len(x))
    return pictures


def draw_class_images(job: Job, folder: Path) -> list[Picture]:
    """One synthesised image per target (default: every class)."""
    from cnnlab.visualize.synthesis import input_range, synthesize, to_pixels

    chosen = _targets(job, None)
    if chosen is None:                                     # every class
        _need_classes(job, "--method class-images without --targets")
        chosen = [Target(None, c) for c in range(len(job.classes))]
    c, h, w = job.info.input_shape
    target_values(job.model, torch.zeros(1, c, h, w), chosen)   # checks layers and channels
    clip = input_range(job.info.mean, job.info.std)
    job.settings.update(targets=", ".join(map(str, chosen)), steps=job.args.steps,
                        clip="the data range [0, 1]")
    with _progress(job, job.args.steps, "class images") as bar:
        x = synthesize(job.model, chosen, steps=job.args.steps, clip=clip,
                       progress=lambda step, j: bar.update(1))
    with torch.no_grad():
        values = target_values(job.model, x, chosen, reduce="mean").diagonal().tolist()
    pixels = to_pixels(x, job.info.mean, job.info.std)
    width = min(10, len(chosen))
    captions = [f"{job.label(t)}: {v:.3g}" for t, v in zip(chosen, values, strict=True)]
    path = save_grid(rows_of(list(pixels), width), folder / "class-images.png",
                     captions=rows_of(captions, width), cell=0.9)
    return [Picture(path, f"synthesised images, {job.args.steps} steps (captions: the target "
                    "and the value it reaches)")]


def draw_filters(job: Job, folder: Path) -> list[Picture]:
    from cnnlab.visualize.maps import first_filters

    w = first_filters(job.model)                                 # F x C x k x k
    cells = list(filter_image(w))
    width = square_width(len(cells))
    captions = [str(i) for i in range(len(cells))]
    path = save_grid(rows_of(cells, width), folder / "filters.png",
                     captions=rows_of(captions, width), cell=0.6)
    f, c, kh, kw = w.shape
    job.settings["filters"] = f"{f} of {c} x {kh} x {kw}"
    return [Picture(path, f"the {f} filters of the first convolution ({c} x {kh} x {kw})")]


def draw_maps(job: Job, folder: Path) -> list[Picture]:
    """Rows of images, each followed by the chosen channels' maps of ``--layer``."""
    from cnnlab.visualize.maps import feature_maps

    layer = job.args.layer
    channels = _channels(job, layer, spatial=True)
    images = _images(job)
    job.settings.update(layer=layer, channels=", ".join(map(str, channels)))
    pictures = []
    n = len(images.x)
    with _progress(job, n, f"maps of {layer}") as bar:
        for start in range(0, n, ROWS_PER_PICTURE):
            x = images.x[start:start + ROWS_PER_PICTURE]
            maps = feature_maps(job.model, x, layer)[:, channels]         # N x K x h x w
            rows = [[images.pixels[start + i], *heatmap(maps[i])] for i in range(len(x))]
            captions = [[images.names[start + i], *(f"{layer}:{c}" for c in channels)]
                        for i in range(len(x))]
            number = start // ROWS_PER_PICTURE + 1
            path = save_grid(rows, folder / f"maps-{layer}-{number}.png", captions=captions,
                             cell=0.6)
            h, w = maps.shape[-2:]
            pictures.append(Picture(path, f"feature maps of {layer} ({h} x {w}) for images "
                                    f"{start + 1}-{start + len(x)}"))
            bar.update(len(x))
    return pictures


def draw_top_k(job: Job, folder: Path) -> list[Picture]:
    """Per channel: its k strongest patches over the data set, above their deconvnet
    reconstructions; one picture of all channels, then one of each."""
    from cnnlab.train._runs import run_data

    args, info = job.args, job.info
    layer = args.layer
    channels = _channels(job, layer, spatial=True)
    split = args.split or "test"
    ds = run_data(info, args.data, args.data_dir, split)
    if args.count is not None:
        ds = ds.subset(slice(0, args.count))
    if len(ds) == 0:
        raise DataError(f"{ds.name} {split} holds no images; pick another --data or --split")
    from cnnlab.visualize.patches import crops, projections, top_k

    per_image = not args.all_positions
    job.settings.update(layer=layer, channels=", ".join(map(str, channels)), k=args.k,
                        ranked=RANKED[per_image], data=f"{ds.name} {split}, {len(ds):,} images")
    found = top_k(job.model, ds, layer, channels, k=args.k, batch_size=args.batch_size,
                  per_image=per_image, mean=info.mean, std=info.std, progress=not args.quiet)
    patches = crops(ds, found, job.model)                      # channels x k x C x h x w
    from cnnlab.train.batches import normalizer
    from cnnlab.visualize.patches import ProjectionMethod, can_project

    sample = normalizer(info.mean, info.std, torch.device("cpu"))(ds[0][0].unsqueeze(0))
    method: ProjectionMethod = ("project" if can_project(job.model, sample, layer) is None
                                else "gradient")
    job.settings["reconstruction"] = RECONSTRUCTION[method]
    back = projections(ds, found, job.model, mean=info.mean, std=info.std, method=method)
    # every channel in one picture first (Fig. 8.15's layout), then one picture each
    h, w = patches.shape[-2:]
    overview: list[list[torch.Tensor]] = []
    labels: list[str] = []
    for row, channel in enumerate(found.channels):
        overview += [list(patches[row]), list(signed_image(back[row]))]
        labels += [f"{layer}:{channel}", "deconvnet"]
    path = save_grid(overview, folder / f"top{found.k}-{layer}.png", row_labels=labels,
                     cell=0.45)
    pictures = [Picture(path, f"{layer}, channels {', '.join(map(str, found.channels))}: each "
                              f"channel's {found.k} strongest units over {found.count:,} images "
                              f"({h} x {w} receptive fields), above their deconvnet "
                              f"reconstructions ({RECONSTRUCTION[method]})")]
    for row, channel in enumerate(found.channels):
        ranks = range(found.k)
        cells = [list(patches[row]), list(signed_image(back[row]))]
        captions = [[f"#{int(found.images[row, r])}: {float(found.values[row, r]):.3g}"
                     for r in ranks], [""] * found.k]
        path = save_grid(cells, folder / f"top{found.k}-{layer}-{channel}.png",
                         captions=captions, row_labels=["patches", "deconvnet"], cell=0.6)
        pictures.append(Picture(path, f"{layer}:{channel}: its {found.k} strongest units over "
                                f"{found.count:,} images, ranking {RANKED[found.per_image]} "
                                f"(captions: image index and activation), cropped at their "
                                f"{h} x {w} receptive field, above the deconvnet "
                                f"reconstruction of each one ({RECONSTRUCTION[method]})"))
    return pictures


# how top-k's deconvnet pictures were made (cnnlab.visualize.patches.projections)
RECONSTRUCTION = {"project": "projected through the stored pool switches and transposed filters",
                  "gradient": "the unit's deconvnet-rule gradient: the network is not a chain "
                              "of layers"}


DRAW: dict[str, Callable[[Job, Path], list[Picture]]] = {
    "saliency": draw_gradients, "deconvnet": draw_gradients, "guided": draw_gradients,
    "top-k": draw_top_k, "class-images": draw_class_images, "filters": draw_filters,
    "maps": draw_maps,
}
