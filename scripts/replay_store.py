"""Train a results store again from the commands its records hold, into a new store.

    python scripts/replay_store.py SOURCE --results NEW --corpus CORPUS [--cache DIR] [--device cuda]
        [--scale small|paper|smoke] [--no-compile] [--experiments main,tying] [--run]

Every record written by ``reproduce`` keeps the command line that made it (its ``command`` field, with the
machine's paths made neutral: ``--results store --cache dla_cache --corpus all_english_mixed.jsonl.gz``). This
tool collects the distinct commands of the store ``SOURCE`` (``--time-limit`` dropped: it only cut a lent
machine's session into parts), puts this machine's ``--results``, ``--cache``, ``--corpus`` and ``--device`` in
place of the recorded ones, pins the recipe and batch size the records name (``--recipe``, ``--batch-size``, so
that a later change of a scale's default recipe does not change the replay; not with ``--scale``, whose scale
trains under its own; a command whose records name no recipe gets a note saying that today's default is used),
and prints them, one per line, in the order their first records were written, each
with the number of records it made. With ``--run`` it runs them one after another and stops at the first that
fails; ``reproduce`` keeps every record already written and trains only what is missing, so running this again
goes on where it stopped. Then ``python -m figures --results NEW --out DIR`` draws the figures and ``python -m
figures claims --results NEW --compare SOURCE`` sets the two claims tables side by side.

Only ``reproduce`` commands are run (``python -m dictionary_learning_aligned reproduce ...`` or ``torchrun
--nproc_per_node N -m dictionary_learning_aligned reproduce ...``, started as ``python -m torch.distributed.run
--standalone --nproc_per_node N ...``), never through a shell, and each is checked against ``reproduce``'s own
flags before anything runs.

Exit status: 0 done, 1 a replayed command failed (its status is printed), 2 refused, nothing run: SOURCE is not a
results store or holds no record with a command; a record's command is not a ``reproduce`` command or has a flag
``reproduce`` does not know; ``--results`` is SOURCE itself or its ``records/`` is SOURCE's (a replay writes a new
store); ``--experiments`` names no experiment, or one that no command of SOURCE runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

PROG = "python -m dictionary_learning_aligned reproduce"
#: the flags whose recorded values belong to the machine that ran them; the replay sets its own
MACHINE_FLAGS = ("--results", "--cache", "--corpus", "--device")
#: flags dropped from a recorded command, with the number of values each takes
DROPPED = {"--time-limit": 1}
#: the longest recorded command read, in characters (``reproduce``'s are a few hundred; argparse takes minutes on
#: a command of some hundred thousand, and a system refuses to start one of a few hundred thousand)
MAX_COMMAND = 20_000


class Refused(ValueError):
    """A store or command this tool will not replay; the message names the record and the problem."""


def parse_command(command: str, record_id: str) -> tuple[int, list[str]]:
    """``(processes, reproduce arguments)`` of a recorded command line.

    Args:
        command: a record's ``command`` field, e.g. ``"python -m dictionary_learning_aligned reproduce main
            --scale small ..."`` or ``"torchrun --nproc_per_node 2 -m dictionary_learning_aligned reproduce ..."``.
        record_id: the record's id, for the message of a refusal.

    Returns:
        the number of processes (1 without torchrun) and the arguments after ``reproduce``.

    Raises:
        Refused: the command is not a string (a damaged or hand-made record), is longer than
            :data:`MAX_COMMAND`, is not a ``reproduce`` command, or cannot be split (unbalanced quotes); torchrun
            with flags other than ``--nproc_per_node N`` (N >= 1; also ``--nproc-per-node``, ``=N``) and
            ``--standalone``.
    """
    if not isinstance(command, str):
        raise Refused(f"record {record_id}: its command is a JSON {type(command).__name__}, not a command line: "
                      f"{command!r}")
    if len(command) > MAX_COMMAND:
        raise Refused(f"record {record_id}: its command is {len(command)} characters long, more than any `{PROG}` "
                      f"command line (at most {MAX_COMMAND} are read): {command[:200]!r}...")
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise Refused(f"record {record_id}: its command cannot be split into words ({e}): {command!r}") from None
    processes = 1
    if words[:1] == ["torchrun"] and "-m" in words:
        m = words.index("-m")  # torchrun's own flags stand before it
        launcher = [w for word in words[1:m] if word != "--standalone" for w in word.split("=", 1)]
        if (len(launcher) != 2 or launcher[0] not in ("--nproc_per_node", "--nproc-per-node")
                or not launcher[1].isdigit() or int(launcher[1]) < 1):
            raise Refused(f"record {record_id}: torchrun's flags {shlex.join(words[1:m])!r} are not read (only "
                          f"--nproc_per_node N with N >= 1, and --standalone): {command!r}")
        processes, words = int(launcher[1]), ["python", *words[m:]]
    if words and re.fullmatch(r"python[0-9.]*", words[0]):  # python3, python3.11: the alias records the name
        words = ["python", *words[1:]]                       # of sys.executable
    if words[:3] == ["python", "-m", "dictionary_learning_aligned.reproduce"]:  # the module alias
        words = ["python", "-m", "dictionary_learning_aligned", "reproduce", *words[3:]]
    if words[:4] != ["python", "-m", "dictionary_learning_aligned", "reproduce"] or len(words) < 5:
        raise Refused(f"record {record_id}: its command is not a `{PROG} EXPERIMENT ...` command: {command!r}")
    return processes, words[4:]


@functools.cache
def reproduce_flags() -> dict[str, bool]:
    """Every flag of ``reproduce``'s parser (``--scale``, ``--time-limit``, ...), with whether it takes a value."""
    from dictionary_learning_aligned.reproduce import build_parser

    parser = build_parser(PROG)
    parser.print_help(io.StringIO())  # simple_parsing adds the flags of the config when it first parses or helps
    return {s: action.nargs != 0 for action in parser._actions for s in action.option_strings}


def experiments_of(args: list[str]) -> list[str]:
    """The experiments that the ``reproduce`` arguments ``args`` (flags spelled out) train: ``EXPERIMENT`` (the
    first word that is neither a flag nor a flag's value, wherever it stands) and those of ``--also``."""
    named, also = [], []
    for i, word in enumerate(args):
        previous = args[i - 1] if i else ""
        if previous == "--also":
            also += [e.strip() for e in word.split(",") if e.strip()]
        elif not word.startswith("-") and not reproduce_flags().get(previous, False):
            named.append(word)
    return named[:1] + also


def spelled_out(args: list[str]) -> list[str]:
    """``args`` with each flag as ``reproduce``'s parser reads it, so that flags are found whatever their spelling:
    ``--flag=value`` split into ``--flag value``, and an abbreviated flag (a prefix of exactly one of
    ``reproduce``'s flags, which argparse accepts: ``--time 5``) written in full (``--time-limit 5``)."""
    flags = reproduce_flags()
    out = []
    for word in args:
        flag, equals, value = word.partition("=") if word.startswith("--") else (word, "", "")
        matches = [f for f in flags if f.startswith(flag)]
        flag = matches[0] if flag not in flags and len(matches) == 1 else flag
        out += [flag, value] if equals else [flag]
    return out


def machine_neutral(args: list[str]) -> list[str]:
    """``args`` without the flags that belong to the machine that ran them (:data:`MACHINE_FLAGS`) and those a
    replay drops (:data:`DROPPED`), each with its value."""
    out, skip = [], 0
    for i, word in enumerate(args):
        if skip:
            skip -= 1
            continue
        if word in MACHINE_FLAGS:
            skip = 1
        elif word in DROPPED:
            skip = DROPPED[word]
        else:
            out.append(word)
    return out


def collect(source: Path) -> list[dict]:
    """The distinct commands of the store ``source``, machine flags removed, in the order of their first record's
    ``created`` time: dicts with ``processes``, ``args`` (after ``reproduce``, flags spelled out by
    :func:`spelled_out`, without :data:`MACHINE_FLAGS` and :data:`DROPPED`), ``experiments`` (those it trains,
    :func:`experiments_of`), ``records`` (how many records it made), ``pinned`` and ``note`` (:func:`pin_recipe`).
    The older spellings ``python3 -m dictionary_learning_aligned.reproduce`` (also ``python3.11``, ...) are read
    as ``python -m dictionary_learning_aligned reproduce``.

    Raises:
        FileNotFoundError: ``source`` has no ``records`` folder.
        ValueError: a damaged record (:func:`dictionary_learning_aligned.records.iter_records`).
        Refused: no record holds a command, or a command is not a ``reproduce`` command.
    """
    from dictionary_learning_aligned.records import iter_records

    found: dict[tuple, dict] = {}
    without = 0
    for record in sorted(iter_records(source), key=lambda r: str(r.get("created", ""))):
        if not record.get("command"):
            without += 1
            continue
        processes, args = parse_command(record["command"], record["id"])
        args = spelled_out(args)
        key = (processes, tuple(machine_neutral(args)))
        entry = found.setdefault(key, dict(processes=processes, args=list(key[1]), experiments=experiments_of(args),
                                           records=0, recipes=set()))
        entry["records"] += 1
        entry["recipes"].add((record.get("recipe"), record.get("batch_size")))
    if not found:
        raise Refused(f"no record of {source} holds the command that made it ({without} records without one): "
                      f"nothing to replay")
    return [pin_recipe(e) for e in found.values()]


def pin_recipe(entry: dict) -> dict:
    """``entry`` with ``entry["pinned"]``: the recipe and batch size its records name (``--recipe R --batch-size
    B``), when the command leaves them to the scale's default (:func:`replay_argv` adds them unless the scale is
    replaced), so that a replay trains under the
    recorded recipe even where a later version changed the default; ``entry["note"]`` says what the records name
    when it is not one recipe and batch size (none: written before records had the fields; several) and the
    command does not set both, so that the replay falls back on today's default."""
    args, recipes = entry["args"], entry.pop("recipes")
    entry["note"], entry["pinned"] = "", []
    if len(recipes) == 1 and None not in next(iter(recipes)):
        recipe, batch = next(iter(recipes))
        entry["pinned"] += [] if "--recipe" in args else ["--recipe", str(recipe)]
        entry["pinned"] += [] if "--batch-size" in args else ["--batch-size", str(batch)]
    elif "--recipe" not in args or "--batch-size" not in args:
        named = sorted(f"recipe {r} " + (f"with batch size {b}" if b is not None else "without batch size")
                       for r, b in recipes if r is not None)
        entry["note"] = (f"its records name {', '.join(named) or 'no recipe'} and its command not both --recipe "
                         f"and --batch-size: today's default for the scale is used, which may differ from what "
                         f"made them")
    return entry


def replay_argv(entry: dict, results: str, cache: str, corpus: str, device: str,
                scale: Optional[str] = None, compile_: bool = True) -> list[str]:
    """The argument list that runs one collected command on this machine (``sys.executable`` first), with this
    machine's ``--results``, ``--cache``, ``--corpus`` and ``--device``, the recipe pinned by :func:`pin_recipe`
    and, if given, ``scale`` in place of the recorded ``--scale`` (then without the pinned recipe: the new scale
    trains under its own); ``compile_=False`` drops ``--compile`` and ``--compile-mode MODE`` (e.g. on a CPU)."""
    args = list(entry["args"]) + (list(entry.get("pinned", ())) if scale is None else [])
    if not compile_:
        args = [w for i, w in enumerate(args) if w != "--compile" and w != "--compile-mode"
                and (i == 0 or args[i - 1] != "--compile-mode")]
    if scale is not None:
        args = [scale if i > 0 and args[i - 1] == "--scale" else a for i, a in enumerate(args)]
        args += [] if "--scale" in args else ["--scale", scale]
    args += ["--results", results, "--cache", cache, "--corpus", corpus, "--device", device]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(entry["processes"])] \
        if entry["processes"] > 1 else []
    return [sys.executable, *launcher, "-m", "dictionary_learning_aligned", "reproduce", *args]


def check_flags(argv: list[str]) -> None:
    """Refuse an argument list with a flag or value ``reproduce`` would refuse (checked with its own parser and
    :func:`dictionary_learning_aligned.cli.parse_config`, as ``reproduce`` reads its flags, then with its checks
    that need no machine: the experiments, ``--also``, ``--recipe``, ``--compile-mode``; before anything runs), or
    one that asks for its help (``-h``).

    Raises:
        Refused: naming the command and argparse's (or reproduce's) message.
    """
    from dictionary_learning_aligned.cli import parse_config
    from dictionary_learning_aligned.dtypes import comma_list
    from dictionary_learning_aligned.reproduce import build_parser
    from dictionary_learning_aligned.reproduce.command import compile_setting
    from dictionary_learning_aligned.reproduce.selection import shared_plans

    args = argv[argv.index("reproduce") + 1:]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            cfg = parse_config(build_parser(PROG), args)
    except SystemExit as e:
        if e.code == 0:
            raise Refused(f"`reproduce` would only print its help for {shlex.join(args)!r}") from None
        message = said.getvalue().strip().splitlines()
        raise Refused(f"`reproduce` would refuse {shlex.join(args)!r}: "
                      f"{message[-1] if message else 'see reproduce -h'}") from None
    try:
        compile_setting(cfg.compile, cfg.compile_mode)
        also = comma_list(cfg.also, flag="--also", allow_empty=False) if cfg.also is not None else []
        shared_plans([cfg.experiment, *also], cfg.scale, None, cfg.recipe)
    except ValueError as e:
        raise Refused(f"`reproduce` would refuse {shlex.join(args)!r}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line of this tool (see the module's docstring)."""
    p = argparse.ArgumentParser(prog="python scripts/replay_store.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="the results store whose records' commands are replayed")
    p.add_argument("--results", required=True, help="the new store to write (not SOURCE)")
    p.add_argument("--corpus", required=True, help="the corpus file the commands read (e.g. the file that "
                   "scripts/build_gpu_corpus.py writes)")
    p.add_argument("--cache", default="dla_cache", help="the activation cache folder (default: dla_cache)")
    p.add_argument("--device", default="cuda", help="the device (default: cuda)")
    p.add_argument("--scale", choices=("smoke", "small", "paper"), default=None,
                   help="replace the recorded --scale (e.g. smoke to try the commands on a CPU)")
    p.add_argument("--no-compile", action="store_true",
                   help="drop the recorded --compile (and --compile-mode), e.g. on a CPU")
    p.add_argument("--experiments", default=None,
                   help="comma-separated: replay only the commands of these experiments (e.g. main,tying)")
    p.add_argument("--run", action="store_true", help="run the commands (default: print them)")
    return p


def main(argv: Optional[list[str]] = None, runner: Callable[[list[str]], int] = None) -> int:
    """Run the tool; returns the exit status (see the module's docstring). ``runner`` runs one argument list and
    returns its exit status (default: :func:`subprocess.call`; tests pass their own)."""
    a = build_parser().parse_args(argv)
    runner = runner or subprocess.call
    try:
        if (Path(a.results).resolve() == a.source.resolve()
                or (Path(a.results) / "records").resolve() == (a.source / "records").resolve()):
            raise Refused(f"--results {a.results} is the store being replayed (or its records/ is); a replay writes "
                          f"a new store")
        entries = collect(a.source)
        if a.experiments is not None:
            wanted = [e.strip() for e in a.experiments.split(",") if e.strip()]
            if not wanted:
                raise Refused(f"--experiments {a.experiments!r} names no experiment (e.g. --experiments main,tying)")
            known = {x for e in entries for x in e["experiments"]}
            unknown = sorted(set(wanted) - known)
            if unknown:
                raise Refused(f"--experiments {unknown}: no command of {a.source} runs them; its commands run "
                              f"{sorted(known)}")
            entries = [e for e in entries if set(e["experiments"]) & set(wanted)]
        argvs = [replay_argv(e, a.results, a.cache, a.corpus, a.device, a.scale, not a.no_compile)
                 for e in entries]
        for argv_ in argvs:
            check_flags(argv_)
    except (Refused, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, (entry, argv_) in enumerate(zip(entries, argvs), 1):
        print(f"[{i}/{len(argvs)}] made {entry['records']} record(s) of {a.source}: {shlex.join(argv_)}")
        if entry["note"]:
            print(f"    note: {entry['note']}")
        if a.run:
            status = runner(argv_)
            if status != 0:
                print(f"command {i} failed with exit status {status}; run this again to go on where it stopped "
                      f"(records already written are kept)", file=sys.stderr)
                return 1
    if not a.run:
        print(f"{len(argvs)} command(s); add --run to run them")
    else:
        results, source = shlex.quote(a.results), shlex.quote(str(a.source))
        print(f"done: then `python -m figures --results {results} --out FIGURES` and `python -m figures claims "
              f"--results {results} --compare {source}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
