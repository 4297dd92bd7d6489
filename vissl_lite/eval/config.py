"""Schema of the ``monitor`` config section: evaluations run during pretraining."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MonitorConfig:
    every_epochs: int = 0             # 0: no online evaluation
    at_start: bool = False            # also before the first step: the random-init baseline
    knn: bool = True
    knn_k: int = 20
    knn_temperature: float = 0.07
    rankme: bool = True
    train_subset: int = 10000         # labelled bank from the train split
    test_subset: int = 2000
    online_linear: bool = False       # a linear head on detached features, as solo-learn does
