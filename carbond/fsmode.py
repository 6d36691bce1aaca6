"""File modes of what carbond creates: state files 0640, directories 0750, whatever the umask.

The ledger and intensity cache hold every user's and account's footprint: a CLI run as root
under umask 022 must not leave them world-readable. Every carbond process narrows its umask
at start (it never widens one that is stricter), and state_dir is created 0750 explicitly.
"""

from __future__ import annotations

import os

from .errors import CarbondError

UMASK = 0o027
"""No write for the group, nothing for others: files 0640, directories 0750 (at most)."""
DIR_MODE = 0o750


def restrict_umask() -> int:
    """Narrow the process umask by UMASK; returns the previous umask (to restore it)."""
    old = os.umask(UMASK)
    os.umask(old | UMASK)
    return old


def make_state_dir(path: str) -> None:
    """Create `path` (and missing parents) as DIR_MODE; an existing directory (or a link to
    one, as an administrator may set up) is left as it was made."""
    if os.path.isdir(path):
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=DIR_MODE, exist_ok=True)
        os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE, follow_symlinks=False)
    except FileExistsError:
        if os.path.islink(path) or not os.path.isdir(path):
            raise CarbondError(f"state_dir {path} exists and is not a directory (a symbolic link?)") from None
    except (OSError, ValueError) as exc:
        raise CarbondError(f"cannot create state_dir {path}: {getattr(exc, 'strerror', None) or exc}") from None
