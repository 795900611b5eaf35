"""Lung nodule segmentation: the classical (training-free) baseline the trained nodule models are measured against."""

from lungseg.nodules.classical import (
    NoduleBaselineParams,
    NoduleCandidate,
    classical_nodule_candidates,
    classical_nodule_mask,
    classical_nodule_probabilities,
    paint_scores,
)

__all__ = ["NoduleBaselineParams", "NoduleCandidate", "classical_nodule_candidates", "classical_nodule_mask",
           "classical_nodule_probabilities", "paint_scores"]
