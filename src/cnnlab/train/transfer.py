"""Pretrained models (8.4.7): load weights trained elsewhere, fine-tune only the deeper layers,
and take the FC7 features of a data set (8.4.1).

Weights come from a run folder, a ``.safetensors`` file, or a torchvision-style ``.pth``
state dict; the last is read by ``torch.load(weights_only=True)``, which builds tensors and
refuses to run code from the file. Nothing here needs per-model code: the output layer is
whatever the model's ``reset_classifier`` replaces, and layers are named as the chapter names
them (``model.layer("fc7")``).

>>> from cnnlab import data, models
>>> model = models.create("lenet5_modern", num_classes=4)          # a new 4-class task
>>> load_pretrained(model, "runs/lenet5-digits")  # 10 classes: output layer left  # doctest: +SKIP
>>> frozen = freeze_until(model, "c3")                 # c1 and c3 keep their weights
>>> features, labels = extract_features(model, data.load("digits", "test", size=32))
>>> features.shape                                     # F6's 84 units: the "FC7 features"
torch.Size([360, 84])
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from cnnlab.data import ImageDataset
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.train._runs import run_data, run_info
from cnnlab.train.batches import Batches, normalizer
from cnnlab.train.loop import resolve_device
from cnnlab.train.run import (
    WEIGHTS,
    device_of,
    load_run,
    read_metadata,
    storage_error,
    write_safetensors,
)

Pool = Literal["flatten", "avg"]
# 8.4.1: "features from the penultimate layer ... are often referred to as FC7 features,
# irrespective of the number of layers in that network"
PENULTIMATE = ("fc7", "pre_logits")
_SHOWN = 3     # names quoted in an error before "... and N more"


# -- loading pretrained weights ---------------------------------------------------------------

@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did."""

    source: str                 # the file the weights came from
    loaded: tuple[str, ...]     # state-dict entries copied into the model
    skipped: tuple[str, ...]    # the source's output layer, left out: made for another class count
    fresh: tuple[str, ...]      # the model's output layer, kept as initialised (when skipped)
    # from an autoencoder (pretraining, 8.5.2): the encoder layers copied, by chapter name
    # (then ``fresh`` holds every entry of the model left as initialised)
    layers: tuple[str, ...] = ()


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The state-dict names of the model's output layer: the entries ``reset_classifier``
    replaces. Found by resetting a copy whose tensors live on the meta device (no memory,
    no change to ``model`` or to the random state); () for a model without the interface.

    >>> from cnnlab import models
    >>> classifier_names(models.create("lenet5_modern"))
    ('output.weight', 'output.bias')
    """
    reset = getattr(model, "reset_classifier", None)
    num_classes = getattr(model, "num_classes", None)
    if not callable(reset) or not isinstance(num_classes, int):
        return ()
    memo: dict[int, Any] = {id(t): _meta_like(t) for t in model.state_dict(keep_vars=True).values()}
    probe = copy.deepcopy(model, memo)
    before = probe.state_dict(keep_vars=True)
    with torch.random.fork_rng(devices=[]):
        probe.reset_classifier(num_classes)  # type: ignore[operator]
    after = probe.state_dict(keep_vars=True)
    changed = [k for k, v in after.items() if before.get(k) is not v]
    return tuple(changed + [k for k in before if k not in after])


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    meta = torch.empty_like(t, device="meta")
    return nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta


def read_state_dict(source: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a run folder (its ``model.safetensors``), a ``.safetensors`` file or a
    ``.pth``/``.pt`` state dict, and the file they came from."""
    path = Path(source)
    if path.is_dir():
        if not (path / WEIGHTS).is_file():
            load_run(path)                          # raises the error that names what is missing
        path = path / WEIGHTS
    if not path.is_file():
        raise ModelError(f"pretrained weights {str(path)!r} do not exist; pass a run folder, a "
                         ".safetensors file or a .pth state dict")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path)), path
        except (SafetensorError, OSError) as err:
            raise ModelError(f"{path}: not a readable safetensors file ({err})") from None
    if path.suffix not in (".pth", ".pt"):
        raise ModelError(f"{path}: unknown weight format {path.suffix!r}; cnnlab reads "
                         ".safetensors and torchvision-style .pth/.pt state dicts")
    save_alone = ("save the weights alone where the file comes from, with "
                  "torch.save(model.state_dict(), path), or as .safetensors")
    try:
        # the restricted unpickler: tensors and plain containers only, no code from the file
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # not PyTorch's text: it tells the reader how to unpickle the file anyway, which must
        # never be done with a file from elsewhere
        if not _is_pickle(path):
            raise ModelError(f"{path}: not a .pth file (neither a torch.save archive nor a "
                             f"pickle); {save_alone}") from None
        raise ModelError(f"{path}: refused: it holds Python objects besides tensors, and "
                         "cnnlab never unpickles objects from a file (they could run code); "
                         f"{save_alone}") from None
    except Exception as err:  # noqa: BLE001 - whatever the file holds, it is refused
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{path}: not a readable .pth state dict ({type(err).__name__}: "
                         f"{first}); {save_alone}") from None
    return _as_state_dict(obj, path), path


def _is_pickle(path: Path) -> bool:
    """A torch.save archive (a zip file) or a pickle (protocol 2 and up start with 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and obj and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        state = dict(obj)
        if all(k.startswith("module.") for k in state):     # saved from a DDP-wrapped model
            state = {k.removeprefix("module."): v for k, v in state.items()}
        return state
    if isinstance(obj, Mapping):
        nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
        hint = (f"; it looks like a checkpoint: if {nested[0]!r} holds the weights, save them "
                f"alone with torch.save(checkpoint[{nested[0]!r}], 'weights.pth')"
                if nested else "")
        keys = ", ".join(repr(k) for k in list(obj)[:_SHOWN])
        raise ModelError(f"{path}: not a flat dict of tensors (keys {keys or 'none'}){hint}")
    raise ModelError(f"{path}: holds a {type(obj).__name__}, not a state dict (a dict of "
                     "tensors); save it with torch.save(model.state_dict(), path)")


def load_pretrained(model: nn.Module, source: str | os.PathLike[str], *,
                    num_classes: int | None = None) -> LoadReport:
    """Load pretrained weights into ``model`` (8.4.7), keeping a fresh output layer when the
    source was trained for another number of classes.

    ``source``: a run folder, a ``.safetensors`` file, or a torchvision ``.pth``/``.pt``
    state dict (read with ``torch.load(weights_only=True)``, so no code in it runs).
    ``num_classes``: first give the model a fresh output layer for this many classes
    (``reset_classifier``). Everything but the output layer must match by name and shape;
    anything else raises :class:`~cnnlab.errors.ModelError` naming the mismatches.

    >>> model = models.create("alexnet", num_classes=10)                    # doctest: +SKIP
    >>> load_pretrained(model, "alexnet-owt-7be5be79.pth").skipped          # doctest: +SKIP
    ('classifier.6.weight', 'classifier.6.bias')
    """
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
        reset = getattr(model, "reset_classifier", None)
        if not callable(reset):
            raise ModelError(f"{type(model).__name__} has no reset_classifier, so num_classes "
                             "cannot change its output layer; leave num_classes out")
        if getattr(model, "num_classes", None) != num_classes:
            reset(num_classes)
    state, path = read_state_dict(source)
    target = model.state_dict()
    head = classifier_names(model)
    # layers a task adds to the network (a localiser's box head) start fresh
    added = tuple(f"{name}." for name in getattr(model, "added_layers", ()))
    missing = [k for k in target if k not in state and k not in head
               and not k.endswith("num_batches_tracked")    # BatchNorm fills it in
               and not k.startswith(added)]
    unexpected = [k for k in state if k not in target]
    reshaped = [f"{k}: {_shape(state[k])} in the file, {_shape(target[k])} in the model"
                for k in state if k in target and k not in head
                and state[k].shape != target[k].shape]
    if missing or unexpected or reshaped:
        parts = [f"{len(names)} {what} ({_first(names)})" for what, names in
                 (("missing", missing), ("unexpected", unexpected),
                  ("with another shape", reshaped)) if names]
        raise ModelError(f"the weights in {path} do not fit {type(model).__name__}: "
                         f"{'; '.join(parts)}. Load them into the architecture they were saved "
                         "from (same model and in_channels); only the output layer may differ")
    head_fits = all(k in state and state[k].shape == target[k].shape for k in head)
    skipped = () if head_fits else tuple(k for k in head if k in state)
    chosen = {k: v for k, v in state.items() if k not in skipped}
    model.load_state_dict(chosen, strict=False)
    fresh = tuple(k for k in target if k not in chosen and (k in head or k.startswith(added)))
    return LoadReport(str(path), tuple(chosen), skipped, fresh)


def load_encoder(model: nn.Module, run_dir: str | os.PathLike[str]) -> LoadReport:
    """Pretraining (8.5.2's last paragraph): copy the encoder layers of an autoencoder run
    into ``model`` (a classifier), layer by layer, where the chapter's name is the same and
    every parameter of the layer has the same shape (``cae_lenet5``'s c1 and c3 into
    ``lenet5_modern``); the rest of ``model`` keeps its initial weights.

    >>> model = models.create("lenet5_modern")                       # doctest: +SKIP
    >>> load_encoder(model, "runs/cae_lenet5-mnist").layers         # doctest: +SKIP
    ('c1', 'c3')
    """
    source, _ = load_run(run_dir)
    encoder = tuple(getattr(source, "encoder_layers", ()))
    own = getattr(model, "chapter_layers", {})
    taken: dict[str, torch.Tensor] = {}
    layers = []
    for name in encoder:
        if name not in own:
            continue
        theirs = dict(_find_layer(source, name).named_parameters())
        path = own[name]
        ours = dict(model.get_submodule(path).named_parameters())
        if theirs.keys() == ours.keys() and all(theirs[k].shape == ours[k].shape for k in ours):
            layers.append(name)
            taken.update({f"{path}.{k}": v.detach() for k, v in theirs.items()})
    if not layers:
        names = ", ".join(own) or "none"
        raise ModelError(f"no encoder layer of {run_dir} ({', '.join(encoder) or 'none'}) has "
                         f"the name and shapes of a layer of {type(model).__name__} ({names}); "
                         "pretrain an autoencoder whose encoder matches (cae_lenet5 for "
                         "lenet5_modern)")
    with torch.no_grad():
        target = model.state_dict()
        for k, v in taken.items():
            target[k].copy_(v)
    fresh = tuple(k for k in model.state_dict() if k not in taken)
    return LoadReport(str(Path(run_dir) / WEIGHTS), tuple(taken), (), fresh, tuple(layers))


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _first(names: Sequence[str]) -> str:
    more = f", ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


# -- fine-tuning only the deeper layers -------------------------------------------------------

@dataclass
class FrozenLayers:
    """What :func:`freeze_until` froze. :meth:`unfreeze` undoes it."""

    frozen: tuple[str, ...]          # parameter names, requires_grad=False
    trainable: tuple[str, ...]       # parameter names still trained
    norm_layers: tuple[str, ...]     # frozen part's batch-norm layers, kept on running statistics
    _params: list[nn.Parameter] = field(default_factory=list, repr=False)
    _hooks: list[RemovableHandle] = field(default_factory=list, repr=False)

    def unfreeze(self) -> None:
        """Train the frozen parameters again and let their norm layers follow train()/eval()."""
        for p in self._params:
            p.requires_grad_(True)
        for h in self._hooks:
            h.remove()
        self._params.clear()
        self._hooks.clear()


def freeze_until(model: nn.Module, layer: str, *, norm_eval: bool = True) -> FrozenLayers:
    """Freeze every parameter up to and including ``layer``, so that only the deeper layers
    fine-tune (8.4.7: "the weights of the early layers (closer to the input) are fixed").

    ``layer``: a chapter name (``"conv3"``, ``"c3"``) or a module path (``"features.6"``);
    "up to" follows the order in which the model registers its modules, which for cnnlab's
    models is the order of the forward pass. The trainer's optimiser skips frozen parameters
    (``requires_grad=False``), so weight decay and momentum leave them alone too.

    ``norm_eval``: batch-norm layers in the frozen part normalise with their running
    statistics and stop updating them, even in ``model.train()`` (as fine-tuning recipes for
    torchvision's models freeze BN); otherwise they would follow each batch and drift from
    the statistics the frozen weights were trained with. A forward pre-hook puts them in eval
    mode at every call, so the training loop needs no change.

    >>> from cnnlab import models
    >>> freeze_until(models.create("lenet5_modern"), "c3").frozen
    ('features.c1.weight', 'features.c1.bias', 'features.c3.weight', 'features.c3.bias')
    """
    target = _find_layer(model, layer)
    modules = list(model.named_modules())
    end = next(i for i, (_, m) in enumerate(modules) if m is target)
    path = modules[end][0]
    # pre-order: everything before ``target`` is registered earlier (its ancestors own only
    # their direct parameters there); ``target``'s own subtree follows it
    before = [m for _, m in modules[:end]]
    params = [p for m in before for p in m.parameters(recurse=False)] + list(target.parameters())
    norms = [(n, m) for n, m in modules[:end] + list(target.named_modules(prefix=path))
             if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    frozen_ids = {id(p) for p in params}
    if all(id(p) in frozen_ids for p in model.parameters()):
        raise ModelError(f"freezing {type(model).__name__} up to {layer!r} leaves no parameter "
                         "to train; name an earlier layer")
    result = FrozenLayers((), (), tuple(n for n, _ in norms) if norm_eval else ())
    for p in params:
        if p.requires_grad:
            p.requires_grad_(False)
            result._params.append(p)
    if norm_eval:
        result._hooks = [m.register_forward_pre_hook(_stay_in_eval) for _, m in norms]
    names = list(model.named_parameters())
    result.frozen = tuple(n for n, p in names if not p.requires_grad)
    result.trainable = tuple(n for n, p in names if p.requires_grad)
    return result


def _stay_in_eval(module: nn.Module, args: object) -> None:
    module.train(False)


# -- what --init and --freeze-until did -----------------------------------------------------

@dataclass(frozen=True)
class TransferReport:
    """What :func:`apply_transfer` did: the weights loaded, the layers frozen, and how many of
    the model's parameters are left to train; :meth:`summary` says it in one line."""

    init: str | None                 # the --init source asked for
    loaded: LoadReport | None        # None: nothing loaded (no --init, or resumed)
    layer: str | None                # the --freeze-until layer asked for
    frozen: FrozenLayers | None
    trainable: int                   # parameters (numbers) that train
    total: int

    def summary(self) -> str:
        parts = []
        if self.loaded is not None and self.loaded.layers:
            done = self.loaded
            parts.append(f"--init {done.source}: the autoencoder's encoder layers "
                         f"{', '.join(done.layers)} ({len(done.loaded)} tensors) copied, the "
                         f"other {len(done.fresh)} tensors keep their initial weights")
        elif self.loaded is not None:
            done = self.loaded
            head = (f"output layer replaced (the file's {_first(done.skipped)} are for another "
                    "class count)" if done.skipped else "output layer loaded too")
            parts.append(f"--init {done.source}: {len(done.loaded)} tensors loaded, {head}")
        elif self.init:
            parts.append(f"--init {self.init}: not loaded again, the checkpoint holds the "
                         "weights")
        if self.frozen is not None:
            layers = list(dict.fromkeys(n.rpartition(".")[0] or n for n in self.frozen.frozen))
            span = layers[0] if len(layers) == 1 else f"{layers[0]} to {layers[-1]}"
            norms = (f", {len(self.frozen.norm_layers)} batch-norm layers on running "
                     "statistics" if self.frozen.norm_layers else "")
            parts.append(f"--freeze-until {self.layer}: {len(layers)} layers frozen "
                         f"({span}){norms}")
        parts.append(f"{self.trainable:,} of {self.total:,} parameters train")
        return "; ".join(parts)


def apply_transfer(model: nn.Module, init: str | None = None, layer: str | None = None, *,
                   resumed: bool = False) -> TransferReport | None:
    """The trainer's ``--init`` (:func:`load_pretrained`; not when ``resumed``: the
    checkpoint holds the weights) and ``--freeze-until`` (:func:`freeze_until`); None when
    neither is asked for."""
    if not init and not layer:
        return None
    loaded = None
    if init and not resumed:
        loaded = (load_encoder(model, init) if _pretrains(init, model)
                  else load_pretrained(model, init))
    frozen = freeze_until(model, layer) if layer else None
    params = list(model.parameters())
    return TransferReport(init, loaded, layer, frozen,
                          sum(p.numel() for p in params if p.requires_grad),
                          sum(p.numel() for p in params))


def _pretrains(source: str, model: nn.Module) -> bool:
    """True when ``source`` is an autoencoder's run folder and ``model`` is not one: --init
    then copies the encoder's layers (:func:`load_encoder`), not the whole network."""
    from cnnlab.train.tasks import task_name

    path = Path(source)
    if not (path.is_dir() and (path / WEIGHTS).is_file()):
        return False
    from_autoencoder = run_info(path).task == "reconstruction"
    return from_autoencoder and task_name(model) != "reconstruction"


def _find_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.layer(name)`` for cnnlab models (their clear error), else a module path."""
    by_name = getattr(model, "layer", None)
    if callable(by_name):
        found = by_name(name)
        if not isinstance(found, nn.Module):
            raise ModelError(f"layer {name!r} of {type(model).__name__} is not a module")
        return found
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children())
        raise ModelError(f"{type(model).__name__} has no layer {name!r}; name a module path "
                         f"such as {children or 'its sub-modules'}") from None


# -- FC7 features -----------------------------------------------------------------------------

class _Reached(Exception):
    """Raised by the feature hook: the layer's output is in hand, the rest of the net is skipped."""


@torch.no_grad()
def extract_features(model: nn.Module, dataset: ImageDataset, layer: str = "fc7", *,
                     pool: Pool = "flatten", batch_size: int = 500,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every image of ``dataset`` at ``layer``: ``(features (N, D) float32,
    labels (N,))``, on the CPU, in the data set's order.

    ``layer``: ``"fc7"`` or ``"pre_logits"`` (default) is the penultimate layer whatever the
    depth (8.4.1's "FC7 features"): ``forward_head(x, pre_logits=True)``, what the model hands
    its output layer (for AlexNet, FC7 after its ReLU). Any other name is a chapter name or
    module path, whose output is taken by a forward hook (for a conv or FC layer, before its
    ReLU); the rest of the network is then skipped. ``pool``: a spatial volume (N, C, H, W)
    is flattened to C*H*W values, or averaged over its positions to C (``"avg"``).
    Inputs are normalised with ``mean``/``std`` (default: the data set's), in eval mode.
    """
    if pool not in ("flatten", "avg"):
        raise CnnlabError(f"pool must be 'flatten' or 'avg', got {pool!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CnnlabError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(dataset) == 0:
        raise CnnlabError(f"no images to take features of ({dataset!r})")
    labels = dataset.labels
    if not isinstance(labels, torch.Tensor):
        raise ShapeError(f"{dataset.name}'s targets are lists of tensors, but a features file "
                         "holds one label per image; take the features of a labelled data set")
    device = device_of(model)
    normalize = normalizer(dataset.mean if mean is None else mean,
                           dataset.std if std is None else std, device)
    batches = Batches(dataset, batch_size, device)
    hook = None if layer in PENULTIMATE else LayerOutput(model, layer)
    forward = hook or _penultimate(model)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for x, _ in tqdm(batches, desc=f"features at {layer}", unit="batch", leave=False,
                         dynamic_ncols=True, disable=None if progress else True):
            out = forward(normalize(x))
            if out.dim() > 2:
                out = out.flatten(1) if pool == "flatten" else out.flatten(2).mean(2)
            chunks.append(out.reshape(len(x), -1).float().cpu())
    finally:
        model.train(was_training)
        if hook is not None:
            hook.close()
    return torch.cat(chunks), labels.clone()


def _penultimate(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    head, features = getattr(model, "forward_head", None), getattr(model, "forward_features", None)
    if not callable(head) or not callable(features):
        raise ModelError(f"{type(model).__name__} has no forward_features/forward_head, so its "
                         "penultimate ('fc7') layer is unknown; name a layer (module path)")
    return lambda x: head(features(x), pre_logits=True)


class LayerOutput:
    """x -> the output of ``layer`` for input x, the rest of the network skipped, by a forward
    hook (on ``module`` where given, else the module ``layer`` names); :meth:`close` removes
    it."""

    def __init__(self, model: nn.Module, layer: str, module: nn.Module | None = None) -> None:
        self.model, self.layer = model, layer
        self.out: torch.Tensor | None = None
        target = _find_layer(model, layer) if module is None else module
        self.handle = target.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: object, output: object) -> None:
        if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
            output = output[0]                       # (values, indices) of a pooling layer
        if not isinstance(output, torch.Tensor):
            raise ModelError(f"layer {self.layer!r} gives a {type(output).__name__}, not a "
                             "tensor; name another layer")
        self.out = output
        raise _Reached

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.out = None
        try:
            self.model(x)
        except _Reached:
            pass
        if self.out is None:
            raise ModelError(f"layer {self.layer!r} is not used in "
                             f"{type(self.model).__name__}'s forward pass; name another layer")
        return self.out

    def close(self) -> None:
        self.handle.remove()


def features_of_run(run_dir: str | os.PathLike[str], data: str | None = None,
                    data_dir: str | None = None, split: str = "test", layer: str = "fc7", *,
                    pool: Pool = "flatten", batch_size: int = 500, progress: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """:func:`extract_features` of a trained run on a data set (default: its own), with the
    images sized and normalised as in training. Returns features, labels and the metadata
    :func:`save_features` stores."""
    info = run_info(run_dir)
    ds = run_data(info, data, data_dir, split)
    model, _ = load_run(run_dir)
    model.to(resolve_device("auto"))
    features, labels = extract_features(model, ds, layer, pool=pool, batch_size=batch_size,
                                        mean=info.mean, std=info.std, progress=progress)
    meta = {"run": str(run_dir), "model": info.model, "layer": layer, "pool": pool,
            "data": ds.name, "split": split, "classes": list(ds.classes),
            "input_shape": list(info.input_shape)}
    return features, labels, meta


def save_features(path: str | os.PathLike[str], features: torch.Tensor, labels: torch.Tensor,
                  metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``features`` (N, D) and ``labels`` (N,) to a ``.safetensors`` file, atomically,
    with ``metadata`` (values stored as JSON, as in a run's weights)."""
    out = Path(path)
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ShapeError(f"save_features needs features (N, D) and labels (N,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {"features": features.detach().cpu().contiguous(),
               "labels": labels.detach().cpu().contiguous()}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(f"cannot create the folder {str(out.parent)!r}", err) from None
    write_safetensors(out, tensors, meta)
    return out


def features_path(run_dir: str | os.PathLike[str], split: str, layer: str,
                  data: str | None = None, pool: Pool = "flatten") -> Path:
    """Where ``cnnlab features`` writes by default: inside the run folder,
    ``RUN/features-[DATA-]SPLIT-LAYER[-avg].safetensors`` (DATA when not the run's own)."""
    parts = ["features", *([data] if data else []), split, layer, *(["avg"] if pool == "avg"
                                                                    else [])]
    return Path(run_dir) / ("-".join(parts).replace(os.sep, "_") + ".safetensors")


def load_features(path: str | os.PathLike[str]
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(features, labels, metadata)`` of a file written by :func:`save_features`."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CnnlabError(f"{path}: not a readable features file ({err}); write it with "
                          "`cnnlab features`") from None
    if set(tensors) != {"features", "labels"}:
        raise CnnlabError(f"{path}: holds {', '.join(sorted(tensors))}, not features and "
                          "labels; write it with `cnnlab features`")
    return tensors["features"], tensors["labels"], read_metadata(path)
