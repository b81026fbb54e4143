"""Training: ``AutoTrainer`` (a Lightning Trainer), ``TunerConfig``, ``LoggerConfig`` / ``LoggerManager`` and callbacks."""
from hubtrain.training.callbacks import AutoModelCheckpoint, TrainingCurvesCallback, slash_safe_filename
from hubtrain.training.loggers import LoggerConfig, LoggerManager
from hubtrain.training.trainer import AutoTrainer
from hubtrain.training.tuner import TunerConfig

__all__ = [
    "AutoTrainer",
    "AutoModelCheckpoint",
    "LoggerConfig",
    "LoggerManager",
    "TrainingCurvesCallback",
    "TunerConfig",
    "slash_safe_filename",
]
