"""Quiet console output: progress bars that suit the terminal or a log file, and third-party chatter kept out
of the user's way (recorded in the run's log file when there is one), with a verbose switch that brings it all
back.

Used by the command lines (``--verbose`` calls ``configure(verbose=True)``) and by the library's long phases:

- :func:`configure` (once, at the start of a command): the verbosity, and optionally a log file that receives
  third-party warnings instead of the console.
- :func:`progress`: a tqdm bar for one long phase. On a terminal it redraws in place; when stderr is not a
  terminal (a log file, a pipe, CI) it writes one plain line at most every ``LINE_INTERVAL_S`` seconds instead of
  carriage-return redraws, which a file would keep as one enormous line.
- :func:`bar_note`: a note after a bar's counts while it stands still for a known reason (e.g. the training bar
  while the activation buffer refills), shown on a terminal only.
- :func:`captured_output`: a context in which ``print`` output (and optionally stderr) of third-party code, such
  as SAEBench's per-probe ``Test accuracy ...`` lines, goes to a log file instead of the console.
- :func:`is_verbose`: whether detail was asked for (per-step training logs, third-party output).

Third-party chatter, hidden unless verbose: nnsight's ``LanguageModel is deprecated`` warning, and deprecation
or future warnings (``DeprecationWarning``, ``PendingDeprecationWarning``, ``FutureWarning``) and scikit-learn's
convergence warnings raised from inside installed packages (``site-packages``/``dist-packages``). Warnings raised
by this project's own code are always shown.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional

#: seconds between two progress lines when stderr is not a terminal
LINE_INTERVAL_S = 30.0
#: message prefixes of third-party warnings that are always chatter
CHATTER_MESSAGES = ("LanguageModel is deprecated",)
#: warning categories that are chatter when raised from inside an installed package
CHATTER_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
#: category names (the classes live in optional packages) that are chatter from inside an installed package
CHATTER_CATEGORY_NAMES = ("ConvergenceWarning", "NNsightDeprecationWarning")

_state = {"verbose": False, "log_file": None, "original_showwarning": None}


def configure(verbose: bool = False, log_file: Optional[str | os.PathLike] = None) -> None:
    """Set how much the program prints. Call it once at the start of a command; calling it again replaces the
    earlier settings.

    Args:
        verbose: True shows everything (third-party warnings and, in the library, per-step training logs);
            False (default) hides third-party chatter (see the module docstring) and keeps one progress bar per
            long phase.
        log_file: a file that receives the hidden third-party warnings (appended, one per line, with their
            source); None drops them. Its folder must exist.

    Raises:
        FileNotFoundError: the folder of ``log_file`` does not exist (nothing is changed then).
    """
    if log_file is not None and not Path(log_file).parent.is_dir():
        raise FileNotFoundError(f"log file folder {Path(log_file).parent} does not exist")
    _state["verbose"] = bool(verbose)
    _state["log_file"] = None if log_file is None else Path(log_file)
    if warnings.showwarning is not _showwarning:
        _state["original_showwarning"] = warnings.showwarning
    warnings.showwarning = _showwarning
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if "transformers" in sys.modules:
            sys.modules["transformers"].logging.set_verbosity_error()


def is_verbose() -> bool:
    """True when :func:`configure` was called with ``verbose=True``."""
    return _state["verbose"]


def is_chatter(message: Warning | str, category: type, filename: str) -> bool:
    """Whether a warning is third-party chatter (hidden unless verbose).

    Args:
        message: the warning (or its text); category: its class; filename: the file that raised it.
    """
    text = str(message)
    if any(text.startswith(m) for m in CHATTER_MESSAGES):
        return True
    in_package = any(part in ("site-packages", "dist-packages") for part in Path(filename).parts)
    named = any(c.__name__ in CHATTER_CATEGORY_NAMES for c in getattr(category, "__mro__", ()))
    return in_package and (issubclass(category, CHATTER_CATEGORIES) or named)


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
    original = _state["original_showwarning"] or warnings._showwarning_orig  # type: ignore[attr-defined]
    if _state["verbose"] or not is_chatter(message, category, filename):
        original(message, category, filename, lineno, file, line)
        return
    if _state["log_file"] is not None:
        with open(_state["log_file"], "a", encoding="utf-8") as f:
            f.write(warnings.formatwarning(message, category, filename, lineno, line))


def progress(iterable: Optional[Iterable] = None, *, total: Optional[float] = None, desc: str = "",
             unit: str = "it", initial: float = 0, disable: bool = False, leave: bool = True,
             file: Optional[IO[str]] = None):
    """A tqdm progress bar for one long phase (use it like ``tqdm``: iterate, or ``update(n)`` and ``close()``).

    Args:
        iterable: what to iterate over (optional); total: the expected number of units; desc: the phase, e.g.
            ``"training"``; unit: what is counted, e.g. ``"step"``; initial: units already done (resumed runs);
            disable: no bar at all; leave: keep the finished bar on a terminal (False: erase it).
        file: where the bar goes (default ``sys.stderr`` at call time). On a terminal the bar redraws in place;
            otherwise it writes one line per update, at most one every ``LINE_INTERVAL_S`` seconds.

    Returns:
        a ``tqdm.tqdm`` instance.
    """
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    file=stream, dynamic_ncols=True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=True,
                file=LineStream(stream), mininterval=LINE_INTERVAL_S, maxinterval=LINE_INTERVAL_S * 4, ncols=100,
                ascii=True)


@contextlib.contextmanager
def bar_note(bar, note: str) -> Iterator[None]:
    """Show ``note`` as the postfix of the progress ``bar`` (a :func:`progress` bar, after its counts) while the
    block runs, and the bar's own postfix again after it, also on error. On a terminal the bar is redrawn at once,
    in place; a bar writing lines (a log file, a pipe) or a disabled bar is left alone, so nothing is written
    (no line per note)."""
    if bar.disable or not _is_terminal(bar.fp):
        yield
        return
    before = bar.postfix
    bar.set_postfix_str(note)
    try:
        yield
    finally:
        bar.postfix = before
        bar.refresh()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineStream:
    """A text stream for tqdm outside a terminal: each redraw (``\\r``-prefixed) becomes one complete line, and
    empty redraws are dropped, so a log file gets readable lines instead of one line with every redraw."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self._last = ""

    def write(self, s: str) -> int:
        """Write the text of one redraw as a line (repeats of the previous line are skipped); returns ``len(s)``."""
        text = s.replace("\r", "").replace("\x1b[A", "").strip()
        if text and text != self._last:
            self.stream.write(text + "\n")
            self._last = text
        return len(s)

    def flush(self) -> None:
        """Flush the underlying stream."""
        self.stream.flush()

    def isatty(self) -> bool:
        """Always False: this stream is for log files and pipes."""
        return False


@contextlib.contextmanager
def captured_output(log_file: Optional[str | os.PathLike], stderr: bool = False) -> Iterator[None]:
    """Send what third-party code prints (stdout, and stderr if ``stderr``) to ``log_file`` (appended) inside
    the ``with`` block, unless verbose; with verbose, or ``log_file`` None while verbose, nothing changes. With
    ``log_file`` None and not verbose, the output is dropped.

    Progress bars made by :func:`progress` before the block keep writing to the console. Exceptions propagate
    unchanged (their tracebacks print after the block, on the real stderr).

    Raises:
        FileNotFoundError: the folder of ``log_file`` does not exist.
    """
    if _state["verbose"]:
        yield
        return
    if log_file is not None and not Path(log_file).parent.is_dir():
        raise FileNotFoundError(f"log file folder {Path(log_file).parent} does not exist")
    target = open(log_file, "a", encoding="utf-8") if log_file is not None else open(os.devnull, "w")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(target))
            if stderr:
                stack.enter_context(contextlib.redirect_stderr(target))
            yield
    finally:
        target.close()
