"""The featurizer between upstream and pooling (s3prl's name): which hidden layers make a frame's
features. One layer by index, the last, or a learnable softmax-weighted sum of all of them.

Legend: l = hidden states, b = segments, t = frames, d = features.
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import Tensor, nn

from ctxemo.errors import ConfigError


def layer_weights(layers: Union[str, int], n_states: int) -> Optional[nn.Parameter]:
    """The learnable layer weights for layers="weighted" (else None), after checking an index fits.

    Zeros give uniform softmax weights: the start is the plain layer average (as in s3prl).

    >>> layer_weights("weighted", 3).tolist(), layer_weights("last", 3)
    ([0.0, 0.0, 0.0], None)
    """
    if isinstance(layers, int) and not -n_states <= layers < n_states:
        raise ConfigError(f"encoder.layers={layers}: this backbone has {n_states} hidden states "
                          f"(0 = input embeddings .. {n_states - 1} = last)")
    return nn.Parameter(torch.zeros(n_states)) if layers == "weighted" else None


def mix_layers(hidden: List[Tensor], layers: Union[str, int], weights: Optional[Tensor]) -> Tensor:
    """[b, t, d] features from the l hidden states [b, t, d] each.

    >>> h = [torch.full((1, 2, 1), float(i)) for i in range(3)]
    >>> mix_layers(h, "weighted", torch.zeros(3)).flatten().tolist(), mix_layers(h, 0, None).flatten().tolist()
    ([1.0, 1.0], [0.0, 0.0])
    """
    if layers == "last":
        return hidden[-1]
    if isinstance(layers, int):
        return hidden[layers]
    softmax = torch.softmax(weights, dim=0)
    # A running sum, not torch.stack: no [l, b, t, d] copy of all layers. In float32 even when the backbone
    # ran in bf16 (encoder.precision): a 0-dim weight would not promote the sum out of bf16.
    mixed = softmax[0] * hidden[0].float()
    for weight, state in zip(softmax[1:], hidden[1:]):
        mixed = mixed + weight * state.float()
    return mixed
