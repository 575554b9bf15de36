"""Shared pieces of the command lines: a parser built from a configuration dataclass (simple-parsing), the
device default, the handling of user errors and of ``--verbose``.

Every command (``python -m dictionary_learning_aligned demo|train|reproduce``, and the old module entry points
``python -m dictionary_learning_aligned.train`` / ``.reproduce`` kept as aliases) describes its settings as one
dataclass whose fields carry a docstring each; :func:`config_parser` turns it into ``--flag-name`` options whose
help is that docstring, so the help and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

#: errors that mean "the input was wrong" (printed as one ``error: ...`` line, exit status 2); anything else is a
#: bug or a crash and keeps its traceback
USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)
#: the narrower set of ``train`` and ``benchmarks run``: a bad setting or a missing, existing or unreadable path (a
#: TypeError or another OSError there keeps its traceback)
SETTING_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


def default_device(local_rank: Optional[int] = None) -> str:
    """The device every command uses unless told otherwise: ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) when
    a CUDA device is available, else ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return "cuda" if local_rank is None else f"cuda:{local_rank}"


def _help_formatter():
    """simple-parsing's help formatter (type names as metavars, descriptions kept as written), adding
    ``(default: X)`` only where the field's docstring does not already say its default."""
    import simple_parsing as sp

    class HelpFormatter(sp.SimpleHelpFormatter):
        def _get_help_string(self, action):
            text = action.help or ""
            if "default" in text or action.required or action.default in (None, "", argparse.SUPPRESS):
                return text
            return text + " (default: %(default)s)"

    return HelpFormatter


def config_parser(prog: str, config_cls: type, description: str = "", epilog: Optional[str] = None):
    """A parser with one ``--flag`` per field of the dataclass ``config_cls`` (dashes for underscores, help =
    the field's docstring, defaults shown); ``parse_config(parser, argv)`` returns the filled dataclass.

    Args:
        prog: the command as the user types it, e.g. ``"python -m dictionary_learning_aligned train"``.
        config_cls: a dataclass; fields without a default become required flags, ``bool`` fields accept
            ``--flag`` (true), ``--flag false`` and ``--noflag``.
        description, epilog: shown before and after the options (kept as written).

    Returns:
        a :class:`simple_parsing.ArgumentParser`.
    """
    import simple_parsing as sp

    parser = sp.ArgumentParser(prog=prog, description=description, epilog=epilog,
                               formatter_class=_help_formatter(), add_config_path_arg=False,
                               add_option_string_dash_variants=sp.DashVariant.DASH)
    parser.add_arguments(config_cls, dest="config")
    return parser


def parse_config(parser, argv: Optional[list[str]]):
    """The dataclass that ``parser`` (from :func:`config_parser`) reads from ``argv`` (default ``sys.argv[1:]``);
    a bad flag exits with status 2 and argparse's message, as for any argparse program. A flag of an optional
    setting given without its value (``--time-limit --archs topk``, or last) is such a bad flag: argparse would
    take it as "not set" and the run would go on without it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parser.parse_args(argv).config
    takes_value = {s for a in parser._actions if a.nargs == "?" and a.type in (int, float, str)  # not booleans
                   for s in a.option_strings}
    for i, token in enumerate(argv):
        if token in takes_value and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            parser.error(f"{token} needs a value")
    return config


def set_verbosity(verbose: bool) -> None:
    """Quiet output by default, everything with ``--verbose``: hands over to the project's console helpers
    (:mod:`.console`: progress bars, third-party warnings) when that module is installed; otherwise only the
    deprecation chatter of nnsight is silenced unless ``verbose``."""
    try:
        from . import console
    except ImportError:
        console = None
    if console is not None and hasattr(console, "configure"):
        console.configure(verbose=verbose)
        return
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", message="LanguageModel is deprecated")


def run_reporting_errors(fn: Callable[[T], object], config: T, errors: tuple = USER_ERRORS) -> int:
    """The error handling of every command's ``main``: call ``fn(config)`` and turn a user's error into one line.

    Args:
        fn: the command's work, called as ``fn(config)``.
        config: its argument (a parsed configuration dataclass, an argparse namespace, an argv list).
        errors: the exception classes that mean "the input was wrong" (default :data:`USER_ERRORS`); any other
            exception propagates with its traceback (a bug or a crash).

    Returns:
        the exit status: ``fn``'s own when it returns an int (not a bool), else 0; 2 after printing ``error:
        <message>`` to stderr when ``fn`` raised one of ``errors`` (a bad setting, a missing file, a refused
        overwrite: the commands check these before writing anything).
    """
    try:
        status = fn(config)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return status if type(status) is int else 0
