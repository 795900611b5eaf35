"""Model weights as Flower parameters, and the n_k-weighted average of the sites' weights (eq. 1 of seed 000).

Only tensors travel: the state dict's values in the model's own key order (both sides build the same
architecture from the same settings), never names, paths or case IDs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["arrays_of", "fedavg", "parameters_bytes", "state_dict_of"]


def arrays_of(state: Mapping[str, torch.Tensor]) -> list[np.ndarray]:
    """A state dict's values as numpy arrays, in key order."""
    return [t.detach().cpu().numpy().copy() for t in state.values()]


def state_dict_of(template: Mapping[str, torch.Tensor], arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """``arrays`` as a state dict with ``template``'s keys, shapes and dtypes (ValueError if they do not fit)."""
    if len(arrays) != len(template):
        raise ValueError(f"got {len(arrays)} arrays for a model with {len(template)} tensors: different architecture "
                         f"or settings on the server and the client")
    state = {}
    for (key, ref), arr in zip(template.items(), arrays):
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(f"tensor {key}: shape {tuple(arr.shape)} != {tuple(ref.shape)}: different model settings")
        state[key] = torch.from_numpy(np.array(arr, copy=True).reshape(ref.shape)).to(ref.dtype)
    return state


def fedavg(results: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """``sum_k n_k/n w_k`` for floating arrays (computed in float64, cast back), the maximum over sites for
    integer arrays (BatchNorm's batch counter), as the in-job ``fedavg`` mode does."""
    if not results:
        raise ValueError("nothing to average")
    total = float(sum(n for _, n in results))
    out = []
    for i, ref in enumerate(results[0][0]):
        values = [np.asarray(arrays[i]) for arrays, _ in results]
        if np.issubdtype(ref.dtype, np.floating):
            acc = np.zeros(ref.shape, dtype=np.float64)
            for (_, n), v in zip(results, values):
                acc += v.astype(np.float64) * (n / total)
            out.append(np.asarray(acc, dtype=ref.dtype))
        else:
            out.append(np.asarray(np.max(np.stack(values), axis=0), dtype=ref.dtype))
    return out


def parameters_bytes(tensors: Sequence[bytes]) -> int:
    """Bytes of serialized Flower parameters (``Parameters.tensors``): what crosses the wire, before gRPC framing."""
    return int(sum(len(t) for t in tensors))
