"""Writing files so that a kill or a full disk never leaves half a file: a temporary file, then rename;
and a lock for processes that must not write at once."""

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from vae_lab.errors import RunFolderError


def unwritable(path: Path, error: OSError) -> RunFolderError:
    """Give back the error that tells the user a file could not be written, and why."""
    reason = error.strerror or str(error)
    return RunFolderError(
        f"could not write {path}: {reason}. Free some disk space, or point the run at a writable "
        "folder (hydra.run.dir=... for a run, hydra.sweep.dir=... for a sweep); files already "
        "written there are unchanged."
    )


def write_atomically(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a kill never leaves half a file."""
    path = Path(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:  # a full disk, a read-only or vanished folder: the old file stays whole
        raise unwritable(path, error) from error
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: Path, data: dict[str, Any]) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")

    write_atomically(path, write)


@contextlib.contextmanager
def file_lock(path: Optional[Path]) -> Iterator[None]:
    """Hold an exclusive lock on the file at path (made if missing) while the block runs; None: no lock."""
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield
