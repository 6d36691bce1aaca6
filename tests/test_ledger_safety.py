"""State that cannot silently vanish (issue 16): a ledger that exists but is empty, truncated, not a
database or a symbolic link is refused with the recovery steps, never recreated over the history;
a new ledger and state directory get their modes whatever the umask."""

import os
import shutil
import stat
import subprocess
import sys

import pytest

from carbond import ledger as L
from carbond.ledger import Entry, Ledger, LedgerError
from carbond.ledger_columns import connect


def filled(state_dir, jobs=20) -> None:
    with Ledger(state_dir, "c1") as led:
        led.record_many([Entry(str(i), L.WRITTEN, 3.6e6, 100.0, "p", "a", "u", 1000.0 + i, reason="x" * 400)
                         for i in range(jobs)])


def refused(state_dir, what: str) -> str:
    with pytest.raises(LedgerError) as err:
        Ledger(state_dir, "c1")
    text = str(err.value)
    assert what in text and "mv " in text and ".broken" in text and "backup" in text, text
    return text


def test_a_missing_ledger_is_created_with_its_schema(tmp_path):
    with Ledger(tmp_path / "state", "c1") as led:
        assert led.state_counts() == {}
    assert (tmp_path / "state" / "ledger.sqlite").read_bytes()[:16] == b"SQLite format 3\x00"
    assert [p.name for p in (tmp_path / "state").iterdir() if p.name.endswith(".new")] == []


def test_an_empty_ledger_is_refused_never_taken_for_a_new_one(tmp_path):
    state = tmp_path / "state"
    filled(state)
    path = state / "ledger.sqlite"
    for side in ("-wal", "-shm"):
        (state / f"ledger.sqlite{side}").unlink(missing_ok=True)
    path.write_bytes(b"")  # a crash during a full disk, a bad restore
    refused(state, "is empty (0 bytes)")
    assert path.stat().st_size == 0  # left as it was, for the operator
    with pytest.raises(LedgerError, match="empty"):
        connect(state, readonly=True)


def test_a_truncated_ledger_is_refused(tmp_path):
    state = tmp_path / "state"
    filled(state, jobs=400)
    path = state / "ledger.sqlite"
    size = path.stat().st_size
    assert size > 8 * 4096
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    refused(state, "damaged or truncated")


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "ledger.sqlite").write_text("5324\n")  # what a followed lock-file link left (issue 16)
    refused(state, "not an sqlite database")
    assert (state / "ledger.sqlite").read_text() == "5324\n"


def test_a_symlinked_ledger_is_refused_and_not_followed(tmp_path):
    state = tmp_path / "state"
    filled(tmp_path / "elsewhere")
    state.mkdir()
    (state / "ledger.sqlite").symlink_to(tmp_path / "elsewhere" / "ledger.sqlite")
    with pytest.raises(LedgerError, match="symbolic link"):
        Ledger(state, "c1")
    (state / "ledger.sqlite").unlink()
    (state / "ledger.sqlite-wal").symlink_to(tmp_path / "victim")
    with pytest.raises(LedgerError, match="symbolic link"):
        Ledger(state, "c1")
    assert not (tmp_path / "victim").exists()


def test_new_ledger_files_are_0640_and_the_state_dir_0750_whatever_the_umask(tmp_path):
    code = ("import os, sys; os.umask(0); from carbond.ledger import Ledger, Entry; "
            "led = Ledger(sys.argv[1], 'c1'); led.record(Entry('1', 'dead', reason='x')); "
            "import stat; print(' '.join(oct(stat.S_IMODE(os.stat(p).st_mode)) for p in sys.argv[2:])); led.close()")
    state = tmp_path / "a" / "state"
    out = subprocess.run([sys.executable, "-c", code, str(state), str(state), str(state / "ledger.sqlite"),
                          str(state / "ledger.sqlite-wal"), str(state / "ledger.sqlite-shm")],
                         capture_output=True, text=True, check=True, env=dict(os.environ)).stdout.split()
    assert out == ["0o750", "0o640", "0o640", "0o640"]


def test_a_ledger_copied_back_whole_opens_with_its_history(tmp_path):
    state = tmp_path / "state"
    filled(state)
    shutil.copy(state / "ledger.sqlite", tmp_path / "backup.sqlite")
    (state / "ledger.sqlite").write_bytes(b"")
    refused(state, "empty")
    os.replace(tmp_path / "backup.sqlite", state / "ledger.sqlite")
    with Ledger(state, "c1") as led:
        assert led.state_counts() == {L.WRITTEN: 20}
    assert stat.S_ISREG(os.lstat(state / "ledger.sqlite").st_mode)


def test_a_world_readable_ledger_left_by_umask_022_is_tightened(tmp_path):
    # issue 16: a CLI run as root with umask 022 created a world-readable ledger
    state = tmp_path / "state"
    old = os.umask(0o022)
    try:
        filled(state)
        os.chmod(state / "ledger.sqlite", 0o666)
        with Ledger(state, "c1"):
            modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in [state, *state.iterdir()]}
    finally:
        os.umask(old)
    assert modes == {"state": "0o750", "ledger.sqlite": "0o640", "ledger.sqlite-wal": "0o640",
                     "ledger.sqlite-shm": "0o640"}
