"""Fixtures live beside the service they start; this file only gathers them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["fixtures_vm", "fixtures_http", "fixtures_slurm"]


def pytest_collection_modifyitems(items) -> None:
    """Every test is marked by the real parts it uses, so `-m` selects them (`-m "not slurm and not
    vm"` runs what needs neither): a test that takes the `slurm` or `vm` fixture gets that mark."""
    import pytest

    for item in items:
        for part in ("slurm", "vm"):
            if part in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, part))
