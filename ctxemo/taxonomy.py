"""The label set: names, multi-label or multi-class, and which labels count as negative."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Sequence

import numpy as np


@dataclass(frozen=True)
class Taxonomy:
    labels: tuple
    multilabel: bool = True
    negative_labels: tuple = ()  # empty: every label is a negative emotion

    @classmethod
    def from_config(cls, cfg) -> "Taxonomy":
        """Build from a `TaxonomyConfig` node (or anything with the same attributes)."""
        return cls(
            labels=tuple(cfg.labels),
            multilabel=bool(cfg.multilabel),
            negative_labels=tuple(cfg.negative_labels),
        )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        return self.labels.index(label)

    @property
    def negative_mask(self) -> np.ndarray:
        """bool [c]: True where the label makes a segment negative."""
        negatives = set(self.negative_labels) or set(self.labels)
        return np.array([name in negatives for name in self.labels], dtype=bool)

    def encode(self, names: Iterable[str]) -> np.ndarray:
        """Label names -> float32 [c] 0/1 vector. Unknown names raise KeyError(name)."""
        vec = np.zeros(self.num_labels, dtype=np.float32)
        for name in names:
            if name not in self.labels:
                raise KeyError(name)
            vec[self.labels.index(name)] = 1.0
        return vec

    def decode(self, vec: Sequence[float], threshold: float = 0.5) -> List[str]:
        return [name for name, v in zip(self.labels, vec) if v >= threshold]

    def is_negative(self, fine: np.ndarray) -> np.ndarray:
        """[n, c] 0/1 -> [n] int: any negative label present."""
        return (fine[:, self.negative_mask] > 0).any(axis=1).astype(np.int64)
