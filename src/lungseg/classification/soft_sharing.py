"""Partial soft parameter sharing between two classification tasks (seed paper 001, section 4).

The paper's two tasks are image diagnosis (plentiful: the readers' malignancy) and pathology diagnosis
(scarce: pathology-confirmed); its *partial* soft sharing keeps the first convolutions of the two task
networks apart ("removes the parameter sharing of conv1 and conv2") and linearly combines the two
networks in the later (pooling and fully connected) layers.

This implementation combines **activations**, cross-stitch style (Misra et al., 2016), rather than the
parameters themselves: each task has its own backbone (:class:`~lungseg.classification.models.Backbone`);
the stem and the first stage are never mixed (the paper's unshared conv1 / conv2); after each of the
later stages ``k`` (stages 2, 3 and 4; the last one feeds the global pooling and the heads) the two
branches' feature maps are replaced by a learned linear combination

    [x_a', x_b'] = A_k [x_a, x_b],   A_k a 2 x 2 matrix initialised near identity ([[0.9, 0.1], [0.1, 0.9]]),

so the networks decide how much of each other they use; ``A_k = I`` is two single-task networks.
Each task has its own dropout + linear head on its branch. Loss: the sum of the tasks' cross-entropies,
each over the rows where its label is known (:func:`lungseg.training.tasks.masked_cross_entropy`).
"""

from __future__ import annotations

import torch
from torch import nn

from lungseg.classification.models import Backbone, Heads, _check_input

#: stages (1-based) after which the branches are mixed: the stem and stage 1 stay task-specific
MIXED_STAGES = (2, 3, 4)
#: initial cross-stitch matrix: mostly itself, a little of the other task
INIT = ((0.9, 0.1), (0.1, 0.9))


class CrossStitch(nn.Module):
    """A learned 2 x 2 linear combination of two same-shaped activations."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(INIT, dtype=torch.float32))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight.to(a.dtype)
        return w[0, 0] * a + w[0, 1] * b, w[1, 0] * a + w[1, 1] * b


class CrossStitchClassifier(nn.Module):
    """Two task networks (one backbone each, ``heads`` has exactly two tasks) joined by cross-stitch units."""

    def __init__(self, backbone: str, in_channels: int, heads: dict[str, int], dropout: float = 0.0,
                 norm: str = "batch") -> None:
        super().__init__()
        if len(heads) != 2:
            raise ValueError(f"soft sharing joins exactly two tasks, got heads {heads}")
        self.tasks = list(heads)
        self.branches = nn.ModuleList(Backbone(backbone, in_channels, norm) for _ in self.tasks)
        self.stitches = nn.ModuleDict({str(k): CrossStitch() for k in MIXED_STAGES})
        self.heads = nn.ModuleList(Heads(self.branches[0].features, {t: heads[t]}, dropout) for t in self.tasks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_input(x, self.branches[0].stem)
        a, b = self.branches[0].stem(x), self.branches[1].stem(x)
        for k, (stage_a, stage_b) in enumerate(zip(self.branches[0].stages, self.branches[1].stages), start=1):
            a, b = stage_a(a), stage_b(b)
            if str(k) in self.stitches:
                a, b = self.stitches[str(k)](a, b)
        return {**self.heads[0](a), **self.heads[1](b)}

    def combination_weights(self) -> dict[int, torch.Tensor]:
        """The learned 2 x 2 matrices by stage (detached copies)."""
        return {int(k): s.weight.detach().clone() for k, s in self.stitches.items()}
