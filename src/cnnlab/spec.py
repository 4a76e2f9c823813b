"""The chapter's notation as a grammar: text -> network (:func:`build`), network -> text
(:func:`to_spec`). The full grammar, with an example of every token, is ``docs/notation.md``.

Both notations of the chapter are accepted and may be mixed, tokens separated by spaces or
commas, or packed together:

- 8.2.7's letters, ``CRCRPCRCRPCRCRPF``: ``C`` a 3x3 half-padded convolution with ``width``
  filters (doubling after each pooling, VGG's rule of 8.4.3), ``R`` ReLU, ``P`` 2x2 max pooling
  at stride 2, ``F`` the output layer with ``num_classes`` units;
- Table 8.2's tokens, ``C3D64 M LRN FC4096 S``: ``C3D64`` 64 filters of 3x3 (padding keeps the
  footprint), ``M`` max pooling, ``LRN`` Eq. 8.2, ``FC4096`` 4096 units, ``S`` the softmax output;
- cnnlab's extensions for Table 8.1: modifiers ``s`` stride, ``p`` padding, ``g`` groups,
  ``d`` dilation, ``c`` ceil-mode pooling (``C11D96s4p2``, ``M3s2``), ``A`` average pooling,
  ``LRN5``, ``DROP0.5``, ``GAP``.

ReLUs: text with no ``R`` at all gets one after every convolution and every FC but the last
(Table 8.2 leaves them implicit); text with any ``R`` gets only the ones written.

>>> net = build("C5D6p0 R P C5D16p0 R P F120 R F84 R F10", (1, 32, 32))
>>> net(torch.zeros(2, 1, 32, 32)).shape
torch.Size([2, 10])
>>> to_spec(build("CRCRPF", (3, 32, 32), num_classes=10))
'C3D32 R C3D32 R M FC10'
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ShapeError, SizeError, SpecError
from cnnlab.inspect import check_size, volume
from cnnlab.ops._shapes import MAX_SIZE, as_tuple, conv_output_length, resolve_padding

__all__ = ["SoftmaxOutput", "SpecNet", "Token", "build", "parse", "to_spec"]

_KINDS = ("C (conv), R (ReLU), P or M (max pool), A (average pool), F or FC (fully connected), "
         "LRN, DROP, GAP, S (softmax)")

# The form of each token kind, quoted in errors.
_FORMS = {
    "C": "a convolution is C[<filter>][D<filters>] with optional s<stride>, p<padding> or "
         "p=valid|half|full, g<groups>, d<dilation>, e.g. C3D64, C11D96s4p2, C3D256g2",
    "P": "a max pool is P or M [<size>] with optional s<stride>, p<padding>, c (ceil mode), "
         "e.g. M, M3s2, P3s2p1",
    "A": "an average pool is A[<size>] with optional s<stride>, p<padding>, c, e.g. A, A3s1p1",
    "F": "a fully connected layer is F or FC [<units>], e.g. FC4096, F120, or a bare final F",
    "L": "local response normalisation is LRN or LRN<odd size>, e.g. LRN5",
    "D": "dropout is DROP or DROP<probability>, e.g. DROP0.5",
    "G": "global average pooling is GAP",
}
_FORMS["M"] = _FORMS["P"]

_SIZE = r"\d+(?:x\d+)*"
_TOKEN = re.compile(rf"""(?>
    (?P<lrn>LRN(?P<lrn_size>\d+)?)
  | (?P<drop>DROP(?P<rate>(?:\d+(?:\.\d*)?|\.\d+)(?:e-?\d+)?)?)
  | (?P<gap>GAP)
  | (?P<fc>FC?(?P<units>\d+)?)
  | (?P<conv>C(?P<conv_size>{_SIZE})?(?:D(?P<filters>\d+))?
        (?P<conv_mods>(?:s{_SIZE}|p(?:{_SIZE}|=(?:valid|half|full))|g\d+|d{_SIZE})*))
  | (?P<pool>(?P<pool_letter>[PMA])(?P<pool_size>{_SIZE})?(?P<pool_mods>(?:s{_SIZE}|p{_SIZE}|c)*))
  | (?P<relu>R)
  | (?P<softmax>S)
)(?=[A-Z\s,]|\Z)""", re.VERBOSE)
_MODIFIER = re.compile(rf"(?P<key>[spgd])(?P<value>{_SIZE}|=(?:valid|half|full))|(?P<flag>c)")
_SEPARATORS = re.compile(r"[\s,]*")


@dataclass(frozen=True)
class Token:
    """One token of a spec, as written and as understood.

    ``kind`` is one of conv, relu, maxpool, avgpool, fc, lrn, dropout, gap, softmax. ``size``
    is the filter or pool size, ``out`` the number of filters, units or the LRN window.
    Fields a token does not give are None (the builder fills in the defaults).
    """

    text: str
    index: int                  # 1-based position among the tokens
    offset: int                 # character offset in the spec text
    kind: str
    size: tuple[int, ...] | None = None
    out: int | None = None
    stride: tuple[int, ...] | None = None
    padding: tuple[int, ...] | str | None = None
    groups: int | None = None
    dilation: tuple[int, ...] | None = None
    ceil: bool = False
    rate: float | None = None

    @property
    def where(self) -> str:
        return _where(self.text, self.index)


def _where(text: str, index: int) -> str:
    shown = text if len(text) <= 32 else f"{text[:24]}...({len(text)} characters)"
    return f"token {shown!r} (#{index})"


def _number(text: str, name: str, where: str) -> int:
    """A number of the notation, range-checked before it reaches int() or PyTorch."""
    digits = text.lstrip("0")
    if len(digits) > len(str(MAX_SIZE)) or (digits and int(digits) > MAX_SIZE):
        shown = text if len(text) <= 24 else f"of {len(text)} digits"
        raise SpecError(f"{where}: the {name} {shown} is out of range: a number in the notation "
                        f"is at most {MAX_SIZE:,}; write a smaller {name}")
    return int(digits or "0")


def _sizes(text: str, name: str, where: str) -> tuple[int, ...]:
    return tuple(_number(v, name, where) for v in text.split("x"))


def _bad_token(text: str, pos: int, index: int, before: Token | None) -> SpecError:
    end = pos
    while end < len(text) and not (text[end].isspace() or text[end] == ","):
        end += 1

    def named(start: int, index: int) -> str:
        word = text[start:end] if end - start <= 24 else text[start:start + 24] + "..."
        return f"token {word!r} (#{index}, at character {start})"

    if before is not None and before.kind == "conv" and before.offset + len(before.text) == pos \
            and text.startswith("D", pos) and not text.startswith("DR", pos):
        # 'C3D', 'C3Ds2': a convolution whose D lacks its number (not a dropout after C3)
        return SpecError(f"{named(before.offset, before.index)} is malformed: the D of a "
                         "convolution is followed by its number of filters, e.g. C3D64; "
                         f"{_FORMS['C']}; see docs/notation.md")
    word = text[pos:end]
    head = named(pos, index)
    form = _FORMS.get(word[:1]) if not word.startswith(("R", "S")) else None
    if word[:1].islower():
        return SpecError(f"{head}: token kinds are upper case ({_KINDS}) and their modifiers "
                         "lower case, e.g. C3D64s2")
    if word.startswith("D") and not word.startswith("DR"):
        return SpecError(f"{head}: D<filters> belongs to a convolution and follows C<size>, "
                         "e.g. C3D64 (packed text reads FC as one token: put a space between "
                         "an F and a C)")
    if form:
        return SpecError(f"{head} is malformed: {form}; see docs/notation.md")
    return SpecError(f"{head} is not part of the notation: expected one of {_KINDS}; "
                     "see docs/notation.md")


def _modifiers(mods: str, where: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for m in _MODIFIER.finditer(mods):
        key = m.group("key") or "c"
        if key in found:
            raise SpecError(f"{where} gives the modifier {key!r} twice; give it once")
        found[key] = m.group("value") or ""
    return found


def _token(m: re.Match[str], index: int) -> Token:
    text, offset = m.group(0), m.start()
    where = _where(text, index)
    if m.group("relu"):
        return Token(text, index, offset, "relu")
    if m.group("softmax"):
        return Token(text, index, offset, "softmax")
    if m.group("gap"):
        return Token(text, index, offset, "gap")
    if m.group("lrn"):
        window = _number(m.group("lrn_size"), "LRN window", where) if m.group("lrn_size") \
            else None
        if window is not None and (window < 1 or window % 2 == 0):
            raise SpecError(f"{where}: the LRN window must be a positive odd number (Eq. 8.2 "
                            f"is symmetric about each channel), got {window}; e.g. LRN5")
        return Token(text, index, offset, "lrn", out=window)
    if m.group("drop"):
        rate = float(m.group("rate")) if m.group("rate") else None
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise SpecError(f"{where}: a dropout probability lies in [0, 1], got {rate}; "
                            "e.g. DROP0.5")
        return Token(text, index, offset, "dropout", rate=rate)
    if m.group("fc"):
        units = _number(m.group("units"), "number of units", where) if m.group("units") \
            else None
        if units == 0:
            raise SpecError(f"{where}: a fully connected layer needs at least 1 unit")
        return Token(text, index, offset, "fc", out=units)
    if m.group("conv"):
        mods = _modifiers(m.group("conv_mods"), where)
        size = _sizes(m.group("conv_size"), "filter size", where) if m.group("conv_size") \
            else None
        filters = _number(m.group("filters"), "number of filters", where) \
            if m.group("filters") else None
        padding: tuple[int, ...] | str | None = None
        if "p" in mods:
            padding = mods["p"][1:] if mods["p"].startswith("=") else \
                _sizes(mods["p"], "padding", where)
        tok = Token(text, index, offset, "conv", size=size, out=filters,
                    stride=_sizes(mods["s"], "stride", where) if "s" in mods else None,
                    padding=padding,
                    groups=_number(mods["g"], "groups", where) if "g" in mods else None,
                    dilation=_sizes(mods["d"], "dilation", where) if "d" in mods else None)
    else:
        mods = _modifiers(m.group("pool_mods"), where)
        kind = "avgpool" if m.group("pool_letter") == "A" else "maxpool"
        tok = Token(text, index, offset, kind,
                    size=_sizes(m.group("pool_size"), "pool size", where)
                    if m.group("pool_size") else None,
                    stride=_sizes(mods["s"], "stride", where) if "s" in mods else None,
                    padding=_sizes(mods["p"], "padding", where) if "p" in mods else None,
                    ceil="c" in mods)
    for name, value in (("filter size", tok.size), ("number of filters", tok.out),
                        ("stride", tok.stride), ("groups", tok.groups),
                        ("dilation", tok.dilation)):
        values = (value,) if isinstance(value, int) else value or ()
        if any(v < 1 for v in values):
            raise SpecError(f"{where}: the {name} must be at least 1, got {value}")
    return tok


def parse(text: str) -> list[Token]:
    """Split a spec into tokens; a token that is not part of the grammar raises SpecError.

    >>> [t.text for t in parse("CRCRP, C3D64s2")]
    ['C', 'R', 'C', 'R', 'P', 'C3D64s2']
    """
    if not isinstance(text, str):
        raise SpecError(f"a spec is a string such as 'C3D64 M FC10', got {type(text).__name__}")
    tokens: list[Token] = []
    pos = 0
    while True:
        pos = _SEPARATORS.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text):
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _bad_token(text, pos, len(tokens) + 1, tokens[-1] if tokens else None)
        tokens.append(_token(m, len(tokens) + 1))
        pos = m.end()
    if not tokens:
        raise SpecError("the spec is empty: write a network such as 'CRCRPF' or "
                        "'C3D64 M C3D128 M FC10'")
    return tokens


class SoftmaxOutput(nn.Module):
    """Table 8.2's ``S``: marks the softmax output layer and returns the scores unchanged.

    The softmax is applied by the loss: ``torch.nn.functional.cross_entropy`` takes the scores
    and computes log-softmax stably. Call ``scores.softmax(-1)`` for probabilities.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


_CONV = {1: cnn.Conv1d, 2: cnn.Conv2d, 3: cnn.Conv3d}
_MAXPOOL = {1: cnn.MaxPool1d, 2: cnn.MaxPool2d, 3: cnn.MaxPool3d}
_AVGPOOL = {1: cnn.AvgPool1d, 2: cnn.AvgPool2d, 3: cnn.AvgPool3d}


class SpecNet(cnn.Classifier, nn.Sequential):
    """A network built from the notation: an ``nn.Sequential`` with the chapter's layer names
    (``conv1``, ``relu1``, ``pool1``, ..., ``flatten``, ``fc6``, ``softmax``) and the model
    interface of every cnnlab model (:class:`cnnlab.nn.Classifier`): ``forward_features`` runs
    up to the last spatial volume, ``forward_head`` from there, ``reset_classifier`` replaces
    the last FC, and ``layer(name)`` finds a layer by its notation name or by an alias that
    :meth:`name_layers` adds (VGG's ``conv3_1``).

    >>> net = build("C11D96s4p2 LRN M3s2 C5D256 LRN M3s2 C3D384 C3D384 C3D256 M3s2 "
    ...             "FC4096 FC4096 FC1000 S", (3, 224, 224))
    >>> net.fc7 is net.layer("fc7")
    True
    """

    def __init__(self, layers: Mapping[str, nn.Module], input_shape: Sequence[int]) -> None:
        super().__init__(OrderedDict(layers))
        self.default_input_shape = tuple(input_shape)    # the size the network was built for
        self.chapter_layers = {name: name for name in self._modules}
        fcs = [m for m in self if isinstance(m, nn.Linear)]
        self.num_classes = fcs[-1].out_features if fcs else None   # the last FC's units

    def __getitem__(self, idx: int | slice) -> nn.Module:
        if isinstance(idx, slice):  # a slice is a plain Sequential: it has no input shape
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def name_layers(self, aliases: Mapping[str, str]) -> SpecNet:
        """Add chapter names for layers, ``{alias: notation name}`` (``{"fc6": "fc9"}``)."""
        for alias, name in aliases.items():
            if name not in self._modules:
                raise SpecError(f"cannot name layer {name!r} {alias!r}: this network has no "
                                f"layer {name!r}; its layers are {', '.join(self._modules)}")
            self.chapter_layers[alias] = name
        return self

    @property
    def spec(self) -> str:
        """The canonical text of the network as it is now (see :func:`to_spec`)."""
        return to_spec(self)

    def _head_start(self) -> int:
        """Index of the first layer after the last spatial volume (GAP, the flattening or an FC)."""
        for i, m in enumerate(self):
            if isinstance(m, (nn.Flatten, cnn.GlobalAvgPool, nn.Linear)):
                return i
        return len(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Up to the last spatial volume (before GAP or the flattening for the first FC)."""
        for m in list(self)[:self._head_start()]:
            x = m(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """From the last spatial volume to the scores; ``pre_logits=True`` stops before the
        last FC (the FC7 features of 8.4.1)."""
        head = list(self)[self._head_start():]
        if pre_logits:
            last = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            head = head[:last[-1]] if last else head
        for m in head:
            x = m(x)
        return x

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last FC by a fresh one with ``num_classes`` units."""
        names = [n for n, m in self.named_children() if isinstance(m, nn.Linear)]
        if not names:
            raise SpecError(f"this network ({self.spec}) has no fully connected output layer to "
                            "replace; end its spec with F or FC<units>")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise SpecError(f"num_classes must be a positive int, got {num_classes!r}")
        setattr(self, names[-1], cnn.fresh_linear(getattr(self, names[-1]), num_classes))
        self.num_classes = num_classes


@dataclass(frozen=True)
class _Layer:
    """A planned layer: made only once the whole text and every shape have been checked."""

    name: str
    make: Callable[[], nn.Module]
    tok: Token                      # the token it comes from (the flattening: the FC's)
    shape: tuple[int, ...]          # its output per example, (C, *spatial) or (n,)
    params: int


class _Builder:
    """Plans the named layers of the tokens, tracking the shape (C, *spatial) or (n,) as it
    goes; :meth:`allocate` makes them once the plan is checked."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int | None, strict: bool,
                 width: int, implicit_relu: bool, last_fc: int | None) -> None:
        self.shape = self.input_shape = input_shape
        self.dims = len(input_shape) - 1          # spatial dims; 0 = flat
        self.num_classes, self.strict, self.width = num_classes, strict, width
        self.implicit_relu, self.last_fc = implicit_relu, last_fc
        self.plan: list[_Layer] = []
        self.names: set[str] = set()
        self.layers: OrderedDict[str, nn.Module] = OrderedDict()    # filled by allocate()
        self.weighted = 0                         # conv/FC layers so far
        self.pools = 0

    def add_layer(self, base: str, tok: Token, make: Callable[[], nn.Module],
                  params: int = 0) -> None:
        """Plan a layer whose output is the current ``self.shape``."""
        name, k = base, 2
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        self.plan.append(_Layer(name, make, tok, self.shape, params))

    def check_size(self, text: str) -> None:
        """Refuse a network above the size limits, from the planned shapes alone."""
        itemsize = torch.get_default_dtype().itemsize
        rows = [("the input", 0, math.prod(self.input_shape) * itemsize)]
        rows += [(f"layer {layer.name!r} from {layer.tok.where}", layer.params,
                  math.prod(layer.shape) * itemsize) for layer in self.plan]
        shown = text if len(text) <= 40 else f"{text[:36]}..."
        check_size(f"the network {shown!r} on input {'x'.join(map(str, self.input_shape))}",
                   sum(r[1] for r in rows), sum(r[2] for r in rows), rows)

    def allocate(self) -> None:
        for layer in self.plan:
            try:
                self.layers[layer.name] = layer.make()
            except (RuntimeError, MemoryError) as err:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
                raise SizeError(f"{layer.tok.where}: its layer {layer.name!r} of "
                                f"{layer.params:,} parameters could not be allocated ({reason}); "
                                "make the network smaller") from None

    @property
    def flat(self) -> bool:
        return len(self.shape) == 1

    @property
    def vol(self) -> str:
        return volume(self.shape, "x")        # the chapter's HxWxD, for messages

    def need_spatial(self, tok: Token, what: str) -> None:
        if self.flat:
            raise SpecError(f"{tok.where} is {what}, but its input is already flat "
                            f"({self.vol} features); move it before the first F/FC "
                            "or GAP")

    def per_dim(self, tok: Token, value: tuple[int, ...], name: str) -> tuple[int, ...]:
        if len(value) == 1:
            return value * self.dims
        if len(value) != self.dims:
            raise SpecError(f"{tok.where} gives {len(value)} values for the {name} of a "
                            f"{self.dims}-D input ({self.vol}); give 1 or {self.dims}")
        return value

    def check_window(self, tok: Token, kernel: tuple[int, ...], stride: tuple[int, ...],
                     padding: tuple[int, ...], dilation: tuple[int, ...], what: str,
                     ceil: bool = False) -> tuple[int, ...]:
        """Check the window fits (and, if strict, the stride divides); return the output size."""
        lengths = self.shape[1:]
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        room = padding if what == "filter" else (0,) * self.dims  # torch pools need L >= F
        if any(n + 2 * p < e for n, p, e in zip(lengths, room, extent)):
            need = "x".join(str(max(e - 2 * p, 1)) for e, p in zip(extent, room))
            raise SpecError(
                f"{tok.where} needs at least {need} but gets {self.vol}: its "
                f"{'x'.join(map(str, extent))} {what} with padding {_join(room)} does not fit; "
                "use a smaller window, more padding, or fewer poolings before it")
        if self.strict and not ceil:
            for n, e, p, s in zip(lengths, extent, padding, stride):
                span = n + 2 * p - e
                if span % s:
                    fits = _divisors(span)[:8]
                    raise SpecError(
                        f"{tok.where}: stride S={s} does not divide L + 2P - F = {n} + 2*{p} - "
                        f"{e} = {span} (L={n}, F={e}, P={p}, S={s}), so the last {span % s} "
                        f"position(s) are never covered (8.2.2); use a stride that divides "
                        f"{span} ({', '.join(map(str, fits))}), change the padding, or build "
                        "with strict=False")
        return tuple(conv_output_length(n, k, s, p, d, ceil) for n, k, s, p, d in
                     zip(lengths, kernel, stride, padding, dilation))

    def add(self, tok: Token) -> None:
        getattr(self, f"add_{tok.kind}")(tok)

    def add_conv(self, tok: Token) -> None:
        self.need_spatial(tok, "a convolution")
        kernel = self.per_dim(tok, tok.size or (3,), "filter size")
        dilation = self.per_dim(tok, tok.dilation or (1,), "dilation")
        stride = self.per_dim(tok, tok.stride or (1,), "stride")
        if tok.padding is None:     # half padding where the filter extent is odd, else none
            padding = tuple(d * (k - 1) // 2 if d * (k - 1) % 2 == 0 else 0
                            for k, d in zip(kernel, dilation))
        elif isinstance(tok.padding, str):
            try:
                padding = resolve_padding(tok.padding, kernel, dilation)
            except ShapeError as err:
                raise SpecError(f"{tok.where}: {err}") from None
        else:
            padding = self.per_dim(tok, tok.padding, "padding")
        channels, filters, groups = self.shape[0], tok.out or self.width, tok.groups or 1
        if filters > MAX_SIZE:
            raise SpecError(f"{tok.where}: a bare C has {filters:,} filters here (the width "
                            f"doubles after each of the {self.pools} pools, 8.4.3), more than "
                            f"{MAX_SIZE:,}; write its number of filters, e.g. C3D64")
        if channels % groups or filters % groups:
            raise SpecError(f"{tok.where}: groups g{groups} must divide both the input depth "
                            f"({channels}, from {self.vol}) and the filters ({filters})")
        out = self.check_window(tok, kernel, stride, padding, dilation, "filter")
        self.check_taps(tok, kernel, stride, padding, dilation, out)
        self.weighted += 1
        self.shape = (filters, *out)
        self.add_layer(f"conv{self.weighted}", tok, partial(
            _CONV[self.dims], channels, filters, kernel, stride, padding, dilation, groups),
            params=filters * (channels // groups) * math.prod(kernel) + filters)
        if self.implicit_relu:
            self.add_layer(f"relu{self.weighted}", tok, cnn.ReLU)

    def check_taps(self, tok: Token, kernel: tuple[int, ...], stride: tuple[int, ...],
                   padding: tuple[int, ...], dilation: tuple[int, ...],
                   out: tuple[int, ...]) -> None:
        """Refuse padding past full (8.2.1: outputs that see padding only) and a filter some of
        whose taps never meet the input (C99 on 8x8: only 15x15 of the 99x99 weights would
        ever be used or trained)."""
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        if any(p > e - 1 for p, e in zip(padding, extent)):
            raise SpecError(
                f"{tok.where}: padding {_join(padding)} is more than its "
                f"{'x'.join(map(str, extent))} filter allows: at most F - 1 = "
                f"{_join([e - 1 for e in extent])} (full padding, 8.2.1); past that the outputs "
                "at the border see padding only; lower p")
        alive = []                  # per dim: taps t whose offset t*d meets the input
        for n, k, s, p, d, m in zip(self.shape[1:], kernel, stride, padding, dilation, out):
            # output i reads input row i*s + t*d - p; first and last taps exactly, the count
            # from the rows the outputs span
            first = -(-p // s)
            last = max(0, -(-(p - d * (k - 1)) // s))
            dead = (first > m - 1 or first * s - p > n - 1
                    or last > m - 1 or d * (k - 1) - p + last * s > n - 1)
            lo, hi = max(0, p - s * (m - 1)), min(d * (k - 1), p + n - 1)
            alive.append(max(1, hi // d - -(-lo // d) + 1) if dead else k)  # ceil(lo/d)..hi//d
        if tuple(alive) != kernel:
            raise SpecError(
                f"{tok.where}: only {'x'.join(map(str, alive))} of the "
                f"{'x'.join(map(str, kernel))} taps of its filter (padding {_join(padding)}) "
                f"ever meet its {self.vol} input; the others see padding only and would never "
                f"be used or trained; use a filter of at most {'x'.join(map(str, alive))}, or "
                "a larger input")

    def add_pool(self, tok: Token, table: Mapping[int, type[nn.Module]]) -> None:
        self.need_spatial(tok, "a pooling layer")
        kernel = self.per_dim(tok, tok.size or (2,), "pool size")
        stride = self.per_dim(tok, tok.stride, "stride") if tok.stride else kernel
        given = tok.padding if isinstance(tok.padding, tuple) else (0,)
        padding = self.per_dim(tok, given, "padding")
        if any(p > k // 2 for p, k in zip(padding, kernel)):
            raise SpecError(f"{tok.where}: a pool's padding must be at most half its size, got "
                            f"padding {_join(padding)} for a {'x'.join(map(str, kernel))} pool; "
                            "lower p")
        out = self.check_window(tok, kernel, stride, padding, (1,) * self.dims, "pool",
                                tok.ceil)
        self.pools += 1
        self.shape = (self.shape[0], *out)
        self.add_layer(f"pool{self.pools}", tok, partial(table[self.dims], kernel, stride,
                                                         padding, ceil_mode=tok.ceil))
        self.width *= 2             # VGG's rule (8.4.3): bare C doubles after each pooling

    def add_maxpool(self, tok: Token) -> None:
        self.add_pool(tok, _MAXPOOL)

    def add_avgpool(self, tok: Token) -> None:
        self.add_pool(tok, _AVGPOOL)

    def add_fc(self, tok: Token) -> None:
        if not self.flat:
            self.shape = (math.prod(self.shape),)
            self.add_layer("flatten", tok, cnn.Flatten)
        units = tok.out if tok.out is not None else self.num_classes
        assert units is not None    # build() checked that a bare F has num_classes
        self.weighted += 1
        features, self.shape = self.shape[0], (units,)
        self.add_layer(f"fc{self.weighted}", tok, partial(cnn.Linear, features, units),
                       params=(features + 1) * units)
        if self.implicit_relu and tok.index != self.last_fc:
            self.add_layer(f"relu{self.weighted}", tok, cnn.ReLU)

    def add_relu(self, tok: Token) -> None:
        self.add_layer(f"relu{self.weighted}", tok, cnn.ReLU)

    def add_lrn(self, tok: Token) -> None:
        self.need_spatial(tok, "local response normalisation (across the maps of a volume)")
        size, channels = tok.out or 5, self.shape[0]
        if size > max(5, 2 * channels - 1):
            # every window of 2C - 1 maps already spans all C maps (Eq. 8.2 sums, it does not
            # average), and a wider one costs memory: PyTorch pads the maps by n // 2 each side
            raise SpecError(f"{tok.where}: a window of {size:,} maps is wider than the "
                            f"2C - 1 = {2 * channels - 1} that already reaches all {channels} "
                            f"maps of its {self.vol} input; write LRN{2 * channels - 1} or less")
        self.add_layer(f"lrn{self.weighted}", tok, partial(cnn.LRN, size))

    def add_dropout(self, tok: Token) -> None:
        self.add_layer(f"drop{self.weighted}", tok,
                       partial(cnn.Dropout, 0.5 if tok.rate is None else tok.rate))

    def add_gap(self, tok: Token) -> None:
        self.need_spatial(tok, "global average pooling")
        self.shape = self.shape[:1]
        self.add_layer("gap", tok, cnn.GlobalAvgPool)

    def add_softmax(self, tok: Token) -> None:
        self.add_layer("softmax", tok, SoftmaxOutput)


def _divisors(n: int) -> list[int]:
    """The divisors of n > 0 in order, in O(sqrt n) steps (n may be past 2**31)."""
    small = [v for v in range(1, math.isqrt(n) + 1) if n % v == 0]
    return small + [n // v for v in reversed(small) if v * v != n]


def _join(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not 1 <= len(shape) <= 4 or not all(isinstance(v, int) and not isinstance(v, bool)
                                           and v > 0 for v in shape):
        raise SpecError(f"input_shape must be 1 to 4 positive ints, channels first: (C, L), "
                        f"(C, H, W) or (C, T, H, W), e.g. (3, 224, 224); got {input_shape!r}")
    if max(shape) > MAX_SIZE:
        raise SpecError(f"input_shape {shape!r} has a size above {MAX_SIZE:,}, the most a "
                        "kernel takes; give a smaller input")
    return shape


def build(text: str, input_shape: Sequence[int], num_classes: int | None = None,
          strict: bool = False, width: int = 32) -> SpecNet:
    """Build the network that ``text`` describes for inputs of shape ``input_shape``.

    ``input_shape`` is (C, H, W) for images, (C, L) for sequences (1-D layers), (C, T, H, W)
    for video (3-D layers). ``num_classes`` sizes a bare final ``F``; ``width`` is the filter
    count of a bare ``C`` before the first pooling. ``strict=True`` also refuses a stride that
    does not divide L + 2P - F (8.2.2's footnote). Errors name the token and the fix.

    >>> build("C3D64 C3D64 M FC10", (3, 32, 32)).fc3
    Linear(in_features=16384, out_features=10, bias=True)
    """
    tokens = parse(text)
    shape = _check_input_shape(input_shape)
    if num_classes is not None and (not isinstance(num_classes, int)
                                    or not 1 <= num_classes <= MAX_SIZE):
        raise SpecError(f"num_classes must be a positive int of at most {MAX_SIZE:,}, got "
                        f"{num_classes!r}")
    if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= MAX_SIZE:
        raise SpecError(f"width must be a positive int of at most {MAX_SIZE:,}, got {width!r}")
    for tok in tokens:
        if tok.kind == "softmax" and tok is not tokens[-1]:
            raise SpecError(f"{tok.where} marks the softmax output, so it must be the last "
                            f"token, but {len(tokens) - tok.index} token(s) follow it")
    fcs = [t for t in tokens if t.kind == "fc"]
    for tok in fcs[:-1]:
        if tok.out is None:
            raise SpecError(f"{tok.where}: a bare F is the output layer (num_classes units); "
                            "give a hidden FC its size, e.g. F120 or FC4096")
    if fcs and fcs[-1].out is None and num_classes is None:
        raise SpecError(f"{fcs[-1].where} is the output layer and takes num_classes units: pass "
                        "num_classes (--num-classes on the command line), or write its size, "
                        "e.g. F10")
    if num_classes is not None:
        if not fcs:
            raise SpecError(f"num_classes={num_classes} is given but the spec has no F/FC output "
                            "layer to size; end it with F, or leave num_classes out")
        if fcs[-1].out is not None and fcs[-1].out != num_classes:
            raise SpecError(f"{fcs[-1].where} has {fcs[-1].out} units but num_classes="
                            f"{num_classes}; write a bare F, or FC{num_classes}")
    builder = _Builder(shape, num_classes, strict, width,
                       implicit_relu=not any(t.kind == "relu" for t in tokens),
                       last_fc=fcs[-1].index if fcs else None)
    for tok in tokens:              # every token and shape is checked before anything is made
        builder.add(tok)
    builder.check_size(text)
    builder.allocate()
    return SpecNet(builder.layers, shape)


# ---------------------------------------------------------------------------- network -> text

def _leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix or type(module).__name__, module


def _dims_of(m: nn.Module) -> int | None:
    for dims, classes in ((1, (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d)),
                          (2, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)),
                          (3, (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d))):
        if isinstance(m, classes):
            return dims
    return None


def _conv_token(m: nn.Conv1d | nn.Conv2d | nn.Conv3d, dims: int, fail: str) -> str:
    if m.bias is None:
        raise SpecError(f"{fail}: the notation's convolutions have a bias; use bias=True")
    if m.padding_mode != "zeros":
        raise SpecError(f"{fail}: the notation pads with zeros only, got padding_mode="
                        f"{m.padding_mode!r}")
    kernel, dilation = tuple(m.weight.shape[2:]), as_tuple(m.dilation, dims, "dilation")
    default = tuple(d * (k - 1) // 2 if d * (k - 1) % 2 == 0 else 0
                    for k, d in zip(kernel, dilation))
    if isinstance(m.padding, str):
        if m.padding == "valid":
            padding: tuple[int, ...] = (0,) * dims
        elif any(d * (k - 1) % 2 for k, d in zip(kernel, dilation)):
            raise SpecError(f"{fail}: padding='same' with an even filter pads unevenly, which "
                            "the notation cannot write; give integer padding")
        else:
            padding = default
    else:
        padding = as_tuple(m.padding, dims, "padding")
    text = f"C{_join(kernel)}D{m.out_channels}"
    stride = as_tuple(m.stride, dims, "stride")
    if stride != (1,) * dims:
        text += f"s{_join(stride)}"
    if padding != default:
        text += f"p{_join(padding)}"
    if m.groups != 1:
        text += f"g{m.groups}"
    if dilation != (1,) * dims:
        text += f"d{_join(dilation)}"
    return text


def _pool_token(m: Any, dims: int, fail: str) -> str:
    if isinstance(m, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d):
        letter = "M"
        if as_tuple(m.dilation, dims, "dilation") != (1,) * dims or m.return_indices:
            raise SpecError(f"{fail}: the notation's max pools have no dilation and return no "
                            "switches")
    else:
        letter = "A"
        padded = as_tuple(m.padding, dims, "padding") != (0,) * dims
        if getattr(m, "divisor_override", None) or (padded and not m.count_include_pad):
            raise SpecError(f"{fail}: the notation's average pools divide by the full window "
                            "(count_include_pad=True, no divisor_override)")
    kernel = as_tuple(m.kernel_size, dims, "kernel_size")
    stride = as_tuple(m.stride, dims, "stride") if m.stride is not None else kernel
    padding = as_tuple(m.padding, dims, "padding")
    text = letter if kernel == (2,) * dims else f"{letter}{_join(kernel)}"
    if stride != kernel:
        text += f"s{_join(stride)}"
    if padding != (0,) * dims:
        text += f"p{_join(padding)}"
    return text + ("c" if m.ceil_mode else "")


def to_spec(module: nn.Module) -> str:
    """Write a :class:`SpecNet`, or an ``nn.Sequential`` (nested ones too) of convolutions,
    max/average pools, ReLU, LRN, dropout, flatten, GAP, FC and ``S`` layers, as canonical text:
    Table 8.2's tokens with every ReLU explicit and modifiers only where they differ from the
    defaults. A module the notation cannot express raises SpecError naming it.

    >>> to_spec(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
    'C3D8 R M'
    """
    leaves = list(_leaves(module))
    tokens: list[str] = []
    dims: int | None = None
    flat, spatial_seen, has_relu, convs, fcs = False, False, False, 0, 0
    for i, (name, m) in enumerate(leaves):
        fail = f"cannot write module {name!r} ({type(m).__name__}) in the notation"
        if tokens and tokens[-1] == "S":
            raise SpecError(f"{fail}: it follows the softmax marker S, which must come last")
        d = _dims_of(m)
        if d is not None:
            if dims is not None and d != dims:
                raise SpecError(f"{fail}: it is {d}-D but earlier layers are {dims}-D")
            if flat:
                raise SpecError(f"{fail}: it follows the flattening; the notation puts spatial "
                                "layers before the first FC")
            dims, spatial_seen = d, True
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            tokens.append(_conv_token(m, d or 0, fail))
            convs += 1
        elif isinstance(m, nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d | nn.AvgPool1d
                        | nn.AvgPool2d | nn.AvgPool3d):
            tokens.append(_pool_token(m, d or 0, fail))
        elif isinstance(m, nn.ReLU):
            tokens.append("R")
            has_relu = True
        elif isinstance(m, cnn.LRN):
            if (m.alpha, m.beta, m.k) != (1e-4, 0.75, 2.0):
                raise SpecError(f"{fail}: LRN is written with AlexNet's alpha=1e-4, beta=0.75, "
                                f"k=2 only, got alpha={m.alpha}, beta={m.beta}, k={m.k}")
            tokens.append("LRN" if m.size == 5 else f"LRN{m.size}")
        elif isinstance(m, nn.Dropout):
            tokens.append("DROP" if m.p == 0.5 else f"DROP{float(m.p)!r}")
        elif isinstance(m, cnn.GlobalAvgPool):
            if not m.flatten:
                raise SpecError(f"{fail}: GAP flattens; use GlobalAvgPool(flatten=True)")
            tokens.append("GAP")
            flat, spatial_seen = True, True
        elif isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise SpecError(f"{fail}: only Flatten(start_dim=1, end_dim=-1) is implied")
            rest = [r for _, r in leaves[i + 1:] if not isinstance(r, nn.ReLU | nn.Dropout)]
            if not flat and not (rest and isinstance(rest[0], nn.Linear)):
                raise SpecError(f"{fail}: the notation flattens only right before the first "
                                "fully connected layer")
            flat = True
        elif isinstance(m, nn.Linear):
            if m.bias is None:
                raise SpecError(f"{fail}: the notation's FC layers have a bias; use bias=True")
            if spatial_seen and not flat:
                raise SpecError(f"{fail}: it acts on a spatial volume with no Flatten before it")
            tokens.append(f"FC{m.out_features}")
            flat, fcs = True, fcs + 1
        elif isinstance(m, SoftmaxOutput):
            tokens.append("S")
        elif isinstance(m, nn.Identity):
            continue
        else:
            hint = (" (it applies the softmax; S is a marker and the loss applies it: drop the "
                    "nn.Softmax and train with cross-entropy)" if isinstance(m, nn.Softmax)
                    else "")
            raise SpecError(f"{fail}: the notation has C, R, P/M, A, F/FC, LRN, DROP, GAP and S "
                            f"only{hint}")
    if not tokens:
        raise SpecError(f"{type(module).__name__} has no layers the notation can write")
    if not has_relu and (convs or fcs > 1):  # text without R would imply ReLUs
        raise SpecError(f"cannot write {type(module).__name__} in the notation: it has no ReLU, "
                        "and text without R implies a ReLU after every C and every FC but the "
                        "last")
    return " ".join(tokens)
