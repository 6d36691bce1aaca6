"""Fixtures live beside the service they start; this file only gathers them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["fixtures_vm", "fixtures_http", "fixtures_slurm"]
