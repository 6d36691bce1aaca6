"""The `constant` provider: one fixed intensity (`intensity.value`, gCO2e/kWh) for every half-hour."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from . import HALF_HOUR, Reading

if TYPE_CHECKING:
    from ..config import IntensityConfig


@dataclass
class ConstantIntensity:
    value: float
    name: str = "constant"
    cacheable: bool = False

    @classmethod
    def from_config(cls, ic: IntensityConfig) -> ConstantIntensity:
        if ic.value is None or not math.isfinite(ic.value) or not 0 <= ic.value <= ic.max_g_per_kwh:
            raise ConfigError([f"intensity.value: a number in 0..{ic.max_g_per_kwh:g} (intensity.max_g_per_kwh) is "
                               f"required by provider constant, got {ic.value!r}"])
        return cls(float(ic.value))

    @property
    def cache_key(self) -> str:
        return f"{self.name}:{self.value:g}"

    def fetch(self, start: int, end: int) -> list[Reading]:
        return [Reading(s, self.value, "constant") for s in range(start, end, HALF_HOUR)]
