"""The composition root: every command's collaborators, built from the config in one place.

Each command (`run`, `backfill`, `footprint`, `idle`, `show`, `estimate`, `report`) takes what it
needs from here, so they all talk to Slurm with the configured clients and `slurm.timeout`, read
power through one VictoriaMetrics client and price through one intensity source with its cache.
Nothing here runs a command or opens a connection: the clients are lazy.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import Config
from .slurm import SlurmIO, node_cpu_lookup

if TYPE_CHECKING:  # `show` builds only Slurm I/O: it does not import numpy for it
    from .engine import Engine
    from .victoria import VictoriaClient


def slurm_io(cfg: Config, runner: Callable[..., Any] = subprocess.run) -> SlurmIO:
    """Slurm's clients as configured, every call bounded by `slurm.timeout`."""
    return SlurmIO(cfg.slurm, cluster=cfg.cluster or None, runner=runner, timeout=cfg.slurm.timeout)


@dataclass
class Services:
    cfg: Config
    slurm: SlurmIO
    engine: Engine
    victoria: VictoriaClient


def build(cfg: Config, runner: Callable[..., Any] = subprocess.run) -> Services:
    """Slurm I/O, then the engine (VictoriaMetrics, intensity source and cache, GPU series), whose
    node CPU counts fall back to Slurm's for nodes the config does not describe."""
    from .engine import build_engine

    slurm = slurm_io(cfg, runner)
    engine, victoria = build_engine(cfg, node_cpus=node_cpu_lookup(slurm))
    return Services(cfg, slurm, engine, victoria)
