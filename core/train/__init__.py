"""Training: :class:`Trainer` (one stage), :class:`TrainConfig`, checkpoints and metrics.

.. code-block:: python

    from diffcomp.train import Trainer, TrainConfig

    trainer = Trainer(model, task, TrainConfig(epochs=5, lr=1e-2), out_dir="runs/demo")
    summary = trainer.fit()                 # summary["test"]["accuracy"]
    trainer.fit(resume=True)                # after a kill: continues, ends bit-identical on CPU

Runs under ``torchrun --nproc_per_node N`` unchanged (DDP; only rank 0 writes).
"""

from .checkpoint import (Checkpoint, CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint,
                         write_checkpoint)
from .config import TrainConfig
from .distributed import Distributed
from .metrics import MetricsLog, read_metrics, without_time
from .schedule import lr_factor
from .trainer import Trainer, TrainingDivergedError, TrainState

__all__ = ["Checkpoint", "CheckpointError", "Distributed", "MetricsLog", "TrainConfig", "TrainState", "Trainer",
           "TrainingDivergedError", "load_checkpoint", "lr_factor", "read_checkpoint", "read_metrics",
           "save_checkpoint", "without_time", "write_checkpoint"]
