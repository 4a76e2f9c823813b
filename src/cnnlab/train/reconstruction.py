"""Reconstruction (8.5.2): the task an autoencoder trains with, on the trainer's one loop.

The target is the input image itself, in [0, 1] pixels before normalisation (the model sees
the normalised image). Losses (``--loss``):

- ``mse``: Eq. 8.6's sum of squared errors over the L x L x d pixels, divided by their
  number (so the learning rate does not depend on the image size): the mean squared error;
- ``l1``: the mean absolute error;
- ``bce``: binary cross-entropy, the negative log-likelihood of the pixels as Bernoulli
  probabilities; the model's outputs are logits and its reconstruction their sigmoid.

``--denoise SIGMA``: a denoising autoencoder. Gaussian noise of std SIGMA is added to the
input pixels (clipped to [0, 1]) and the clean image is the target. The noise comes from a
generator seeded by the run's seed and a key (each training step and process; each test
example's index), never from hidden state: a resumed run draws the same noise, and every
evaluation the same test noise, whatever its batch size.

Figures: ``loss`` (the criterion, per pixel), ``mse`` of the reconstruction on [0, 1] pixels
and ``psnr`` = 10 log10(1 / mse) in dB, of the whole set's mse. ``RUN/reconstructions.png``
shows test images above their reconstructions (and, denoising, the noisy inputs between).

>>> from cnnlab.train import TrainConfig, train
>>> result = train(TrainConfig("cae", epochs=2, out="/tmp/cae"), progress=False)  # doctest: +SKIP
>>> result["test_mse"], result["test_psnr"]                                       # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.train.run import RECONSTRUCTIONS as GRID  # the run folder's picture of them
from cnnlab.train.tasks import Sums, Task

if TYPE_CHECKING:
    from cnnlab.train.config import TrainConfig

LOSSES = ("mse", "l1", "bce")
SHOWN = 10                        # test images in that picture
MIN_MSE = 1e-10                   # psnr of a perfect reconstruction: 100 dB, not infinity
NOISE_SEED = 0xDE401E            # mixed into the noise generator's seed


class Reconstruction(Task):
    """The input is the target: ``loss`` one of :data:`LOSSES`, ``denoise`` the std of the
    input noise (0: none), ``seed`` the run's (the noise's generator)."""

    name = "reconstruction"
    monitor = "mse"
    headline = ("mse", "psnr", "loss")

    def __init__(self, loss: str = "mse", denoise: float = 0.0, seed: int = 0) -> None:
        if loss not in LOSSES:
            raise CnnlabError(f"unknown reconstruction loss {loss!r}: use mse (Eq. 8.6), l1 or "
                              "bce (binary cross-entropy)")
        if isinstance(denoise, bool) or not isinstance(denoise, int | float) or not (
                math.isfinite(denoise) and denoise >= 0):
            raise CnnlabError(f"denoise is the std of the input noise, a number >= 0; got "
                              f"{denoise!r}")
        self.criterion, self.denoise, self.seed = loss, float(denoise), int(seed)
        self.shown: dict[str, torch.Tensor] = {}    # the latest evaluation's first images
        self._keep = False
        self._checked = False

    @classmethod
    def from_config(cls, config: TrainConfig) -> Reconstruction:
        """The task of ``cnnlab train``'s settings (``--loss``, ``--denoise``, ``--seed``)."""
        if config.label_smoothing:
            raise CnnlabError(f"label_smoothing={config.label_smoothing} applies to class "
                              f"labels, but {config.model!r} is an autoencoder (its target is "
                              "the image); drop --label-smoothing")
        return cls("mse" if config.loss == "auto" else config.loss, config.denoise, config.seed)

    # -- the batch ---------------------------------------------------------------------------

    def prepare(self, x: torch.Tensor, y: Any, *, train: bool, key: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy or clean input, clean image)`` of a batch of [0, 1] images."""
        if not self._checked or (not train and key == 0):
            self._check_pixels(x)
        target = x
        if self.denoise:
            noise = self.noise(x.shape, train, key).to(device=x.device, dtype=x.dtype)
            x = (x + self.denoise * noise).clamp(0.0, 1.0)
        if not train and key == 0:                    # the first test batch: kept for the grid
            self._keep = True
            self.shown = {"input": x[:SHOWN].detach().float().cpu(),
                          "target": target[:SHOWN].detach().float().cpu()}
        return x, target

    def noise(self, shape: Sequence[int], train: bool, key: int) -> torch.Tensor:
        """Standard normal noise of ``shape`` (N x C x H x W), on the CPU whatever the device
        (so it is the same on every device). Training: one draw per step (``key``). Test:
        one draw per example, keyed by its index in the test set (``key`` is the batch's
        first), so the noise does not depend on the batch size or the torchrun split."""
        gen = torch.Generator()
        if train:
            return torch.randn(tuple(shape), generator=gen.manual_seed(self._seed(True, key)))
        return torch.stack([torch.randn(tuple(shape[1:]),
                                        generator=gen.manual_seed(self._seed(False, key + i)))
                            for i in range(shape[0])]) if shape[0] else torch.zeros(tuple(shape))

    def _seed(self, train: bool, key: int) -> int:
        # one stream per (run seed, train or test, key); below 2**63 as manual_seed wants
        return (self.seed * 1_000_003 + 2 * key + int(train) + NOISE_SEED) % 2**63

    def _check_pixels(self, x: torch.Tensor) -> None:
        """The targets are pixels in [0, 1]: what bce's likelihood and psnr's peak assume.
        Checked on the first batch and each evaluation's first (one sync each)."""
        self._checked = True
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise CnnlabError(f"reconstruction targets are the images' pixels in [0, 1], got "
                              f"values in [{lo:.4g}, {hi:.4g}]; give un-normalised images "
                              "(ImageDataset.images in [0, 1]; the trainer normalises the "
                              "inputs itself)")

    # -- loss and figures --------------------------------------------------------------------

    def image(self, output: torch.Tensor) -> torch.Tensor:
        """The reconstruction in pixels from the model's output (bce: logits -> sigmoid)."""
        return torch.sigmoid(output) if self.criterion == "bce" else output

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        out = output if isinstance(output, torch.Tensor) else output[0]
        if self.criterion == "bce":
            return F.binary_cross_entropy_with_logits(out, target)
        if self.criterion == "l1":
            return F.l1_loss(out, target)
        return F.mse_loss(out, target)                 # Eq. 8.6 / (L * L * d)

    def train_sums(self, output: Any, target: torch.Tensor) -> Sums:
        out = output if isinstance(output, torch.Tensor) else output[0]
        if self.criterion == "mse":
            return {}                                  # the loss is the mse already
        return {"mse": _per_image(self.image(out.detach()) - target, 2).sum()}

    def predict(self, output: Any) -> torch.Tensor:
        """The reconstruction in pixels: what the figures, views and ensembles use."""
        return self.image(super().predict(output).float())

    def eval_sums(self, prediction: torch.Tensor, target: torch.Tensor) -> Sums:
        if prediction.shape != target.shape:
            raise CnnlabError(f"the model's reconstruction is {tuple(prediction.shape)} but "
                              f"its input {tuple(target.shape)}; an autoencoder must give "
                              "back its input's size")
        if self._keep:
            self._keep = False
            self.shown["output"] = prediction[:SHOWN].detach().float().cpu()
        error = prediction - target
        if self.criterion == "bce":        # of the probabilities; log clamped at -100 (torch)
            per = F.binary_cross_entropy(prediction.clamp(0.0, 1.0), target, reduction="none")
            loss = per.flatten(1).mean(1).sum()
        else:
            loss = _per_image(error, 2 if self.criterion == "mse" else 1).sum()
        return {"loss": loss, "mse": _per_image(error, 2).sum()}

    def figures(self, sums: Mapping[str, torch.Tensor], n: int) -> dict[str, Any]:
        out = super().figures(sums, n)
        if "mse" not in out and "loss" in out:         # training figures of the mse criterion
            out["mse"] = out["loss"]
        if "mse" in out:
            out["psnr"] = psnr(out["mse"])
        return out

    def summary(self, figures: Mapping[str, Any]) -> str:
        return (f"test reconstruction MSE {figures['mse']:.4g} (PSNR {figures['psnr']:.2f} "
                "dB)")

    @classmethod
    def describe(cls, figures: Mapping[str, Any]) -> str:
        return (f"reconstruction MSE {figures['mse']:.4g}, PSNR {figures['psnr']:.2f} dB, "
                f"loss {figures['loss']:.4g}")

    def write_outputs(self, folder: Path, sums: Mapping[str, torch.Tensor],
                      records: Sequence[Mapping[str, Any]], plots: bool) -> None:
        """``RUN/reconstructions.png`` (the latest evaluation's first test images) and, with
        ``plots``, ``RUN/curves.png``."""
        if {"target", "output"} <= self.shown.keys():
            write_grid(folder / GRID, self.shown["target"], self.shown["output"],
                       self.shown["input"] if self.denoise else None)
        if plots:
            from cnnlab.train.plots import write_plots

            write_plots(folder, list(records))


def _per_image(error: torch.Tensor, power: int) -> torch.Tensor:
    """Each image's mean |error|^power over its pixels: (N,)."""
    e = error.flatten(1)
    return (e.square() if power == 2 else e.abs()).mean(1)


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on [0, 1] pixels:
    10 log10(1 / mse) (100 dB for a perfect reconstruction).

    >>> psnr(0.01)
    20.0
    """
    return 10.0 * math.log10(1.0 / max(float(mse), MIN_MSE))


def write_grid(path: Path, originals: torch.Tensor, reconstructions: torch.Tensor,
               inputs: torch.Tensor | None = None) -> Path:
    """A PNG of ``originals`` (N x C x H x W in [0, 1]) in the top row and their
    ``reconstructions`` below (clipped to [0, 1]); ``inputs`` (the noisy ones) in between.
    Written atomically; small images are enlarged (28x28 by 4)."""
    from PIL import Image

    from cnnlab.train.run import atomic_write

    rows = [originals] + ([inputs] if inputs is not None else []) + [reconstructions]
    n, c, h, w = originals.shape
    if any(r.shape != originals.shape for r in rows) or c not in (1, 3) or n == 0:
        raise CnnlabError(f"a reconstruction grid needs images and reconstructions of one "
                          f"shape N x 1|3 x H x W, got {[tuple(r.shape) for r in rows]}")
    gap = 2
    canvas = torch.ones(c, len(rows) * (h + gap) - gap, n * (w + gap) - gap)   # white gaps
    for i, row in enumerate(rows):
        for j in range(n):
            canvas[:, i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = (
                row[j].float().clamp(0.0, 1.0))
    scale = max(1, 112 // max(h, w))                 # small images drawn larger
    pixels = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path
