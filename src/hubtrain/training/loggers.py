"""Loggers as configuration: ``LoggerConfig(backend, params)`` and ``LoggerManager`` that builds Lightning loggers.

Every backend writes inside the run directory unless ``params`` say otherwise, and none of them needs a network:
MLflow uses a local SQLite store in the run directory, Weights & Biases runs offline unless you turn that off yourself.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

BACKENDS = ("csv", "tensorboard", "mlflow", "wandb")

# backend -> (importable module that proves the package is installed, extra to install)
_REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "csv": ((), ""),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "mlflow": (("mlflow",), "mlflow"),
    "wandb": (("wandb",), "wandb"),
}


def _check_installed(backend: str) -> None:
    modules, extra = _REQUIREMENTS[backend]
    if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ImportError(
            f"LoggerConfig(backend={backend!r}) needs the {modules[0]!r} package; "
            f'install it with: pip install "hubtrain[{extra}]"'
        )


@dataclass
class LoggerConfig:
    """One logger. ``params`` go to the Lightning logger's constructor (``save_dir``, ``name``, ``project``, ...).

    As in AutoTimm, ``backend`` is case-insensitive and ``params`` defaults to ``{}``; unlike AutoTimm, no key is
    required (``save_dir`` defaults to the run directory, MLflow to a local store).
    """

    backend: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.backend = str(self.backend).lower()
        if self.params is None:
            self.params = {}
        if self.backend not in BACKENDS:
            raise ValueError(f"LoggerConfig: unknown backend={self.backend!r}; use one of {list(BACKENDS)}")
        if self.params is not None and not isinstance(self.params, dict):
            raise ValueError(
                f"LoggerConfig(backend={self.backend!r}): params must be a dict, got {type(self.params).__name__}"
            )

    def build(self, save_dir: str | Path) -> Logger:
        """Instantiate the logger; ``save_dir`` (the run directory) is where it writes unless ``params`` say otherwise."""
        _check_installed(self.backend)
        params = dict(self.params or {})
        save_dir = Path(save_dir)
        if self.backend == "csv":
            from pytorch_lightning.loggers import CSVLogger

            if "save_dir" not in params:  # straight into the run directory: <run_dir>/metrics.csv
                params.update(save_dir=str(save_dir), name="", version="")
            return CSVLogger(**params)
        if self.backend == "tensorboard":
            from pytorch_lightning.loggers import TensorBoardLogger

            if "save_dir" not in params:
                params.update(save_dir=str(save_dir), name="tensorboard", version="")
            return TensorBoardLogger(**params)
        if self.backend == "mlflow":
            from pytorch_lightning.loggers import MLFlowLogger

            if "tracking_uri" not in params:
                # A local store in the run directory, no server. MLflow 3 refuses its old file store unless
                # MLFLOW_ALLOW_FILE_STORE=true, so the local default is its recommended SQLite database.
                local = Path(params.pop("save_dir", save_dir)).resolve()
                if rank_zero_only.rank == 0:  # only rank 0 opens the database
                    local.mkdir(parents=True, exist_ok=True)
                params["tracking_uri"] = f"sqlite:///{local / 'mlflow.db'}"
                params.setdefault("artifact_location", (local / "mlartifacts").as_uri())
            params.setdefault("experiment_name", "hubtrain")
            return MLFlowLogger(**params)
        # wandb: offline unless the user explicitly asks for something else
        from pytorch_lightning.loggers import WandbLogger

        if "offline" not in params and "mode" not in params:
            params["offline"] = True
        params.setdefault("save_dir", str(save_dir))
        return WandbLogger(**params)


class LoggerManager:
    """A list of ``LoggerConfig`` (or dicts, or ready Lightning loggers) turned into loggers for one run.

    ``AutoTrainer`` builds them per run (``build(run_dir)``). AutoTimm's reading side is here too: ``loggers`` (built
    once, on first use, writing where ``params`` say or under the current directory), ``len``, iteration, indexing
    and ``get_logger_by_backend``.
    """

    def __init__(self, configs: Sequence[LoggerConfig | dict | Logger]) -> None:
        if isinstance(configs, (LoggerConfig, Logger, dict)):
            configs = [configs]
        parsed: list[LoggerConfig | Logger] = []
        for cfg in configs:
            if isinstance(cfg, dict):
                cfg = LoggerConfig(**cfg)
            if not isinstance(cfg, (LoggerConfig, Logger)):
                raise ValueError(
                    f"LoggerManager: expected LoggerConfig, dict or a Lightning Logger, got {type(cfg).__name__}: {cfg!r}"
                )
            if isinstance(cfg, LoggerConfig):
                _check_installed(cfg.backend)  # fail when the trainer is built, not after the first epoch
            parsed.append(cfg)
        self.configs = parsed
        self._loggers: list[Logger] | None = None

    def build(self, save_dir: str | Path) -> list[Logger]:
        return [cfg.build(save_dir) if isinstance(cfg, LoggerConfig) else cfg for cfg in self.configs]

    @property
    def loggers(self) -> list[Logger]:
        """The loggers, built on first use (``pl.Trainer(logger=manager.loggers)`` as in AutoTimm)."""
        if self._loggers is None:
            self._loggers = self.build(Path.cwd())
        return self._loggers

    def get_logger_by_backend(self, backend: str) -> Logger | None:
        """The first of ``loggers`` built from a config with this backend (``None`` when there is none)."""
        for cfg, logger in zip(self.configs, self.loggers):
            if isinstance(cfg, LoggerConfig) and cfg.backend == backend.lower():
                return logger
        return None

    def __iter__(self) -> Iterator[Logger]:
        return iter(self.loggers)

    def __getitem__(self, index: int) -> Logger:
        return self.loggers[index]

    def __len__(self) -> int:
        return len(self.configs)

    def __repr__(self) -> str:
        return f"LoggerManager({self.configs!r})"
