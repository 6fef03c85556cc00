"""Small shared helpers."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from tqdm.auto import tqdm as auto_tqdm
from tqdm.autonotebook import tqdm as notebook_or_plain_tqdm
from tqdm.std import tqdm as plain_tqdm

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc/self/status``); elsewhere
    set and restored at once under a lock, the only way POSIX offers to read it."""
    with contextlib.suppress(OSError):  # no /proc: fall back to setting and restoring it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _mode_of_ordinary_write(path: Path) -> int:
    """What ``open(path, "w")`` would leave: an existing file keeps its mode, a new one gets 0o666 minus the umask."""
    try:
        info = path.stat()
    except OSError:
        return 0o666 & ~current_umask()
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else 0o666 & ~current_umask()


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path`` and rename it into place, so readers never
    see a half-written file. The file gets the permissions of an ordinary ``open(path, "w")`` (a new file
    ``0o666`` minus the umask, a replaced file its previous mode), not ``mkstemp``'s private ``0o600``.
    File-system errors name ``path``, not the temporary file."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        os.chmod(tmp, _mode_of_ordinary_write(path))
        os.replace(tmp, path)
    except OSError as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        names_temporary = error.filename is None or Path(error.filename).name.startswith(f".{path.name}.")
        if error.errno is None or not names_temporary:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def finite_or_none(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples, floats) with every NaN / ±Infinity replaced by ``None``: JSON has no
    such numbers, and Python's ``json`` would otherwise write bare ``NaN`` that strict parsers reject."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def write_json(path: str | Path, payload: Any, undefined_as_null: bool = False, **dumps_options: Any) -> Path:
    """Write ``payload`` atomically as strict JSON (``allow_nan=False``). With ``undefined_as_null`` non-finite
    floats become ``null`` (metrics that are undefined, e.g. APl without large objects); otherwise a non-finite
    value is refused with a ``ValueError`` before anything is written."""
    if undefined_as_null:
        payload = finite_or_none(payload)
    try:
        text = json.dumps(payload, allow_nan=False, **dumps_options)
    except ValueError as error:
        raise ValueError(f"refusing to write {path}: it would contain a non-finite number ({error})") from None
    return atomic_write_text(path, text)


#: Outside a terminal a progress bar writes a line at most this often (seconds) ...
LOG_PROGRESS_SECONDS = 10.0
#: ... and, when its total is known, at most once per this fraction of it
LOG_PROGRESS_FRACTION = 0.05


class _LinePerRefresh:
    """A text stream for tqdm that turns each carriage-return refresh into one line: a log file keeps every
    refresh, so overwriting in place only piles them up on one line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None)

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:  # tqdm's bare "\n" / "\r" at close only end or clear the bar in place
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable[Any] | None = None, *, file: IO[str] | None = None, **options: Any) -> Any:
    """A tqdm progress bar (``tqdm.auto``: widgets in notebooks) over ``iterable`` with tqdm's ``options``.

    When ``file`` (default stderr) is not a terminal, e.g. ``regionclip demo > demo.log``, the bar writes
    whole lines instead of redrawing itself: the start, at most one line per `LOG_PROGRESS_SECONDS`, and for a
    known total at most one per `LOG_PROGRESS_FRACTION` of it (until a stretch that slow outlasts tqdm's
    ``maxinterval``), and the final state, which is never cleared."""
    stream = sys.stderr if file is None else file
    isatty = getattr(stream, "isatty", None)
    in_notebook = notebook_or_plain_tqdm is not plain_tqdm
    if options.get("disable") or in_notebook or (isatty is not None and isatty()):
        return auto_tqdm(iterable, file=file, **options)
    total = options.get("total")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    options = {**options, "mininterval": LOG_PROGRESS_SECONDS, "leave": True}
    if total and "miniters" not in options:
        options["miniters"] = max(1, math.ceil(total * LOG_PROGRESS_FRACTION))
    return plain_tqdm(iterable, file=_LinePerRefresh(stream), **options)
