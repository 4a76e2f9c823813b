"""The layers of LeNet-5 that modern networks dropped (8.2.7; LeCun et al., 1998).

- :class:`Squash`: the scaled hyperbolic tangent f(a) = 1.7159 tanh(2a/3);
- :class:`Subsampling`: 2x2 average x a trainable coefficient + a trainable bias, per map;
- :class:`PartialConv2d`: a convolution in which each output map sees only some input maps
  (C3's connection table);
- :class:`RBF`: Euclidean radial basis units with fixed prototypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab import ops
from cnnlab.errors import ShapeError


class Squash(nn.Module):
    """LeNet-5's squashing function f(a) = A tanh(S a) with A = 1.7159, S = 2/3, so that
    f(1) = 1 and f(-1) = -1."""

    def __init__(self, amplitude: float = 1.7159, slope: float = 2.0 / 3.0) -> None:
        super().__init__()
        self.amplitude, self.slope = amplitude, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.tanh(self.slope * x)

    def extra_repr(self) -> str:
        return f"amplitude={self.amplitude}, slope={self.slope:.4g}"


class Subsampling(nn.Module):
    """LeNet's trainable subsampling (S2, S4): each map is averaged over 2x2 regions at
    stride 2, multiplied by its own trainable coefficient (``weight``) and shifted by its own
    trainable bias (``bias``): 2 parameters per map. The squashing follows as a separate layer.

    The paper sums the four inputs; we average them, which only rescales the coefficient
    (initialised to 1 here so the layer starts as a plain average).
    """

    def __init__(self, channels: int, kernel_size: int = 2) -> None:
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.avg_pool(x, self.kernel_size)                       # (N, C, H/2, W/2)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return y * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"


# Table I of LeCun et al. (1998): which S2 maps (0-5) feed each of C3's 16 maps. Maps 0-5
# take 3 contiguous maps, 6-11 take 4 contiguous, 12-14 take 4 non-contiguous, 15 takes all.
LENET5_C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class PartialConv2d(nn.Module):
    """A convolution whose output map ``p`` sees only the input maps ``table[p]``.

    LeNet-5's C3 uses this to break symmetry and save connections: 60 filter slices of 5x5
    instead of 96, so 1,500 weights + 16 biases. ``weight`` holds only the connected slices,
    shape (connections, F, F); they are scattered into a full filter bank for the convolution.
    """

    out_index: torch.Tensor
    in_index: torch.Tensor

    def __init__(self, in_channels: int, table: Sequence[Sequence[int]], kernel_size: int,
                 bias: bool = True) -> None:
        super().__init__()
        pairs = [(p, k) for p, inputs in enumerate(table) for k in inputs]
        if any(not 0 <= k < in_channels for _, k in pairs):
            raise ShapeError(f"PartialConv2d: the table names input maps outside 0..{in_channels - 1}")
        self.in_channels, self.out_channels = in_channels, len(table)
        self.kernel_size = kernel_size
        self.table = tuple(tuple(t) for t in table)
        self.register_buffer("out_index", torch.tensor([p for p, _ in pairs]), persistent=False)
        self.register_buffer("in_index", torch.tensor([k for _, k in pairs]), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(pairs), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # LeCun's rule: uniform in +-2.4 / fan-in, where fan-in differs per output map
        fan_in = torch.tensor([len(t) * self.kernel_size ** 2 for t in self.table], dtype=torch.float)
        with torch.no_grad():
            bound = (2.4 / fan_in)[self.out_index].view(-1, 1, 1)
            self.weight.uniform_(-1, 1).mul_(bound)
            if self.bias is not None:
                self.bias.uniform_(-1, 1).mul_(2.4 / fan_in)

    def full_weight(self) -> torch.Tensor:
        """The (C_out, C_in, F, F) filter bank with zeros where there is no connection."""
        w = self.weight.new_zeros(self.out_channels, self.in_channels, self.kernel_size,
                                  self.kernel_size)
        return w.index_put((self.out_index, self.in_index), self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.conv(x, self.full_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"connections={self.weight.shape[0]}")


# Stylised 7x12 bitmaps of the digits ('#' = +1, '.' = -1), drawn for cnnlab after the
# idea of LeNet-5's output prototypes (8.2.7): 12 rows of 7 pixels, flattened to 84 values.
DIGIT_BITMAPS: tuple[str, ...] = (
    ("......." "..###.." ".#...#." "#.....#" "#.....#" "#.....#"
     "#.....#" "#.....#" "#.....#" ".#...#." "..###.." "......."),  # 0
    ("......." "...#..." "..##..." ".#.#..." "...#..." "...#..."
     "...#..." "...#..." "...#..." "...#..." ".#####." "......."),  # 1
    ("......." "..###.." ".#...#." "#.....#" "......#" ".....#."
     "....#.." "...#..." "..#...." ".#....." "#######" "......."),  # 2
    ("......." "#######" ".....#." "....#.." "...#..." "..###.."
     ".....#." "......#" "......#" "#....#." ".####.." "......."),  # 3
    ("......." "....#.." "...##.." "..#.#.." ".#..#.." "#...#.."
     "#######" "....#.." "....#.." "....#.." "....#.." "......."),  # 4
    ("......." "#######" "#......" "#......" "#####.." ".....#."
     "......#" "......#" "......#" "#....#." ".####.." "......."),  # 5
    ("......." "...##.." "..#...." ".#....." "#......" "#.###.."
     "##...#." "#.....#" "#.....#" ".#...#." "..###.." "......."),  # 6
    ("......." "#######" "......#" ".....#." ".....#." "....#.."
     "....#.." "...#..." "...#..." "..#...." "..#...." "......."),  # 7
    ("......." "..###.." ".#...#." "#.....#" ".#...#." "..###.."
     ".#...#." "#.....#" "#.....#" ".#...#." "..###.." "......."),  # 8
    ("......." "..###.." ".#...#." "#.....#" "#.....#" ".#...##"
     "..###.#" "......#" ".....#." "....#.." "..##..." "......."),  # 9
)


def rbf_prototypes(num_classes: int, seed: int = 0) -> torch.Tensor:
    """(num_classes, 84) prototypes in {-1, +1}: the digit bitmaps for 10 classes; otherwise
    random codes with equal odds of -1 and +1, which the paper names as an alternative."""
    if num_classes == 10:
        rows = [[1.0 if c == "#" else -1.0 for c in b] for b in DIGIT_BITMAPS]
        return torch.tensor(rows)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (num_classes, 84), generator=g).float() * 2 - 1


class RBF(nn.Module):
    """Euclidean radial basis units: y_i = sum_j (x_j - w_ij)^2 for fixed prototypes w_i.

    The smallest y is the prediction. The prototypes are a buffer, not trained.
    """

    prototypes: torch.Tensor

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes.clone().float())

    @property
    def out_features(self) -> int:
        return int(self.prototypes.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = x.unsqueeze(1) - self.prototypes.to(x.dtype)         # (N, classes, 84)
        return diff.pow(2).sum(-1)                                  # (N, classes)

    def extra_repr(self) -> str:
        n, d = self.prototypes.shape
        return f"in_features={d}, out_features={n}"


def rbf_map_loss(scores: torch.Tensor, target: torch.Tensor, j: float = 1.0) -> torch.Tensor:
    """LeNet-5's maximum a posteriori loss on RBF outputs y = -scores:

        E = y_target + log(exp(-j) + sum_i exp(-y_i)),  averaged over the batch.

    The first term pulls the output towards the right prototype; the second pushes the wrong
    ones away, but only while they come closer than about j. It is cross-entropy over the class
    scores plus one extra "rubbish" class whose score is fixed at -j.
    """
    return nn.functional.nll_loss(rbf_log_proba(scores, j), target)


def rbf_log_proba(scores: torch.Tensor, j: float = 1.0) -> torch.Tensor:
    """The class log-probabilities behind :func:`rbf_map_loss`: a softmax over the scores and
    the rubbish class, which keeps the rest of the mass (N, classes)."""
    rubbish = scores.new_full((scores.shape[0], 1), -float(j))
    return nn.functional.log_softmax(torch.cat([scores, rubbish], dim=1), dim=1)[:, :-1]


def lecun_uniform_(module: nn.Module) -> None:
    """LeCun et al. (1998), Appendix C: weights and biases uniform in +-2.4 / fan-in."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = 2.4 / fan_in
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -bound, bound)


__all__ = [
    "DIGIT_BITMAPS",
    "LENET5_C3_TABLE",
    "RBF",
    "PartialConv2d",
    "Squash",
    "Subsampling",
    "lecun_uniform_",
    "rbf_map_loss",
    "rbf_prototypes",
]
