"""``scripts/replay_store.py``: a store trained again from the commands its records hold."""

import importlib.util
import sys
from pathlib import Path

import pytest

from dictionary_learning_aligned.records import write_record
from tests.test_figures import make_record
from tests.test_reproduce_full_batches import served  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("replay_store", ROOT / "scripts" / "replay_store.py")
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)

MAIN = ("python -m dictionary_learning_aligned reproduce main --also budget --scale small --device cuda --results "
        "store --cache dla_cache --corpus all_english_mixed.jsonl.gz --epochs 4 --chunk 18 --compile --archs relu "
        "--time-limit 1432")
TYING = ("torchrun --nproc_per_node 2 -m dictionary_learning_aligned reproduce tying --scale small --device cuda "
         "--results store --cache dla_cache --corpus c.jsonl.gz --epochs 4 --chunk 9 --compile --compile-mode "
         "reduce-overhead --alignments tied --time-limit 833")


def _store(path, commands):
    """A store with one record per (command, seed): records of one command differ in seed."""
    for i, command in enumerate(commands):
        for seed in (0, 1):
            r = make_record("relu", None, 0.02, seed, experiment=f"e{i}", command=command,
                            created=f"2026-12-0{i + 1}T00:00:0{seed}")
            write_record(path, r)
    return path


def _run(argv):
    calls = []
    status = replay.main(argv, runner=lambda a: calls.append(a) or 0)
    return status, calls


def test_commands_are_collected_once_in_the_order_made_with_this_machines_paths(tmp_path, capsys):
    src = _store(tmp_path / "src", [MAIN, TYING, MAIN.replace("1432", "99")])
    status, calls = _run([str(src), "--results", str(tmp_path / "new"), "--corpus", "here.jsonl.gz", "--run"])
    assert status == 0 and len(calls) == 2  # the third command is the first with another time limit
    main_, tying = calls
    assert main_[:5] == [sys.executable, "-m", "dictionary_learning_aligned", "reproduce", "main"]
    assert "--time-limit" not in main_ and main_.count("--results") == 1 and "store" not in main_
    assert main_[-8:] == ["--results", str(tmp_path / "new"), "--cache", "dla_cache", "--corpus", "here.jsonl.gz",
                          "--device", "cuda"]
    assert tying[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert tying[6:10] == ["-m", "dictionary_learning_aligned", "reproduce", "tying"]
    out = capsys.readouterr().out
    assert "[1/2] made 4 record(s)" in out and "[2/2] made 2 record(s)" in out and "compare" in out


def test_flags_written_with_equals_or_abbreviated_are_read_as_reproduce_reads_them(tmp_path):
    """argparse (so ``reproduce``) reads ``--time-limit=5`` and ``--time 5`` as ``--time-limit 5``: they are
    dropped, and the machine's flags replaced, whatever their spelling."""
    odd = ("python -m dictionary_learning_aligned reproduce main --scale=small --time-limit=5 --results=store "
           "--cach dla_cache --corp=c.jsonl.gz --dev cuda --compile --compile-m=default")
    src = _store(tmp_path / "src", [odd, odd.replace("--time-limit=5", "--time 9")])
    status, calls = _run([str(src), "--results", str(tmp_path / "new"), "--corpus", "c", "--no-compile", "--run"])
    assert status == 0 and len(calls) == 1  # one command: only the time limit differed
    (argv,) = calls
    assert argv[argv.index("reproduce") + 1:] == ["main", "--scale", "small", "--results", str(tmp_path / "new"),
                                                 "--cache", "dla_cache", "--corpus", "c", "--device", "cuda"]


@pytest.mark.parametrize("launcher", ["torchrun --nproc_per_node=2", "torchrun --standalone --nproc_per_node 2",
                                      "torchrun --nproc-per-node=2 --standalone"])
def test_torchrun_flags_in_other_spellings_are_read(tmp_path, launcher):
    src = _store(tmp_path / "src", [TYING.replace("torchrun --nproc_per_node 2", launcher)])
    status, (argv,) = _run([str(src), "--results", str(tmp_path / "new"), "--corpus", "c", "--run"])
    assert status == 0 and argv[1:10] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                          "-m", "dictionary_learning_aligned", "reproduce", "tying"]

def test_print_only_scale_and_compile_overrides_and_experiment_filter(tmp_path, capsys):
    src = _store(tmp_path / "src", [MAIN, TYING])
    base = [str(src), "--results", str(tmp_path / "new"), "--corpus", "c"]
    status, calls = _run(base)
    assert status == 0 and calls == [] and "2 command(s); add --run" in capsys.readouterr().out
    status, calls = _run(base + ["--scale", "smoke", "--no-compile", "--experiments", "tying", "--run"])
    assert status == 0 and len(calls) == 1
    (argv,) = calls
    assert argv[argv.index("--scale") + 1] == "smoke" and argv.count("--scale") == 1
    assert "--compile" not in argv and "--compile-mode" not in argv and "reduce-overhead" not in argv
    assert argv[argv.index("--alignments") + 1] == "tied"



def test_experiments_are_found_after_flags_and_in_also(tmp_path):
    """The experiment may follow flags (``reproduce --scale small main``), and ``--also`` trains more: both are
    experiments the command runs."""
    late = "python -m dictionary_learning_aligned reproduce --scale small --compile main --also budget,sizes"
    src = _store(tmp_path / "src", [late, TYING])
    for wanted in ("main", "budget", " sizes , main"):
        status, calls = _run([str(src), "--results", str(tmp_path / "new"), "--corpus", "c", "--run",
                              "--experiments", wanted])
        assert status == 0 and len(calls) == 1 and "budget,sizes" in calls[0], wanted

def test_a_failed_command_stops_the_replay(tmp_path, capsys):
    src = _store(tmp_path / "src", [MAIN, TYING])
    calls = []
    status = replay.main([str(src), "--results", str(tmp_path / "new"), "--corpus", "c", "--run"],
                         runner=lambda a: calls.append(a) or 3)
    assert status == 1 and len(calls) == 1
    assert "command 1 failed with exit status 3" in capsys.readouterr().err


@pytest.mark.parametrize("commands, extra, message", [
    ([MAIN], ["--results-is-source"], "is the store being replayed"),
    ([""], [], "holds the command that made it"),
    (["rm -rf /"], [], "is not a `python -m dictionary_learning_aligned reproduce"),
    (["python -m dictionary_learning_aligned train --x 1"], [], "is not a `python -m"),
    (["python -m dictionary_learning_aligned reproduce main --epochs 'four"], [], "cannot be split"),
    ([MAIN + " --no-such-flag 3"], [], "`reproduce` would refuse"),
    ([MAIN], ["--experiments", "gemma"], "no command of"),
    (["python -m dictionary_learning_aligned reproduce main --scale small --chunk"], [], "--chunk needs a value"),
    (["python -m dictionary_learning_aligned reproduce main -h"], [], "would only print its help"),
    ([MAIN + " --epochs 4" * 2000], [], "characters long"),
    (["torchrun --nproc_per_node 0 -m dictionary_learning_aligned reproduce main"], [], "torchrun's flags"),
    (["torchrun --nnodes 2 --nproc_per_node 2 -m dictionary_learning_aligned reproduce main"], [], "torchrun's flags"),
    (["python -m dictionary_learning_aligned reproduce nosuch --scale small"], [], "unknown experiment 'nosuch'"),
    ([MAIN.replace("--also budget", "--also nosuch")], [], "unknown experiment 'nosuch'"),
    ([MAIN.replace(" --compile ", " --compile-mode default ")], [], "--compile-mode default needs --compile"),
    ([MAIN], ["--experiments", " , "], "--experiments ' , ' names no experiment"),
    ([MAIN], ["--experiments", ""], "--experiments '' names no experiment"),
    ([5], [], "is a JSON int, not a command line"),
    ([["python", "-m", "dictionary_learning_aligned", "reproduce", "main"]], [], "is a JSON list, not a command"),
])
def test_refusals_run_nothing_and_write_nothing(tmp_path, capsys, commands, extra, message):
    src = _store(tmp_path / "src", commands)
    new = src if extra == ["--results-is-source"] else tmp_path / "new"
    extra = [] if extra == ["--results-is-source"] else extra
    status, calls = _run([str(src), "--results", str(new), "--corpus", "c", "--run", *extra])
    assert status == 2 and calls == [] and not (tmp_path / "new").exists()
    said = capsys.readouterr()
    assert message in said.err and said.out == ""


def test_a_results_folder_whose_records_are_the_sources_is_refused(tmp_path, capsys):
    src = _store(tmp_path / "src", [MAIN])
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "records").symlink_to(src / "records")
    status, calls = _run([str(src), "--results", str(tmp_path / "new"), "--corpus", "c", "--run"])
    assert status == 2 and calls == [] and "the store being replayed" in capsys.readouterr().err


def test_a_folder_that_is_not_a_store_is_refused(tmp_path, capsys):
    status, calls = _run([str(tmp_path), "--results", str(tmp_path / "new"), "--corpus", "c", "--run"])
    assert status == 2 and calls == [] and "no results store" in capsys.readouterr().err


def test_every_record_of_the_committed_faithful_store_replays(capsys):
    """Every record of the committed faithful store names a `reproduce` command that passes reproduce's own flag
    check; the commands printed account for every record."""
    store = ROOT / "results" / "reproduce_faithful"
    status, calls = _run([str(store), "--results", "new", "--corpus", "c"])
    out = capsys.readouterr().out
    made = [int(line.split("made ")[1].split(" ")[0]) for line in out.splitlines() if "made " in line]
    assert status == 0 and calls == [] and made
    assert sum(made) == len(list((store / "records").glob("*.json*")))


def test_the_recorded_recipe_is_pinned_and_a_store_without_one_gets_a_note(tmp_path, capsys):
    src = tmp_path / "src"
    for seed in (0, 1):
        write_record(src, make_record("relu", None, 0.02, seed, command=MAIN, recipe="saebench", batch_size=2048))
    base = [str(src), "--results", str(tmp_path / "new"), "--corpus", "c", "--run"]
    status, (argv,) = _run(base)
    assert status == 0 and argv[argv.index("--recipe") + 1] == "saebench"
    assert argv[argv.index("--batch-size") + 1] == "2048"
    status, (argv,) = _run(base + ["--scale", "smoke"])  # another scale trains under its own recipe
    assert status == 0 and "--recipe" not in argv and "--batch-size" not in argv
    old = tmp_path / "old"  # records written before the recipe field, in the module alias's spelling
    for seed in (0, 1):
        write_record(old, make_record("relu", None, 0.02, seed, command="python3 -m dictionary_learning_aligned."
                                      "reproduce main --scale small --results store"))
    capsys.readouterr()
    status, (argv,) = _run([str(old), "--results", str(tmp_path / "new"), "--corpus", "c", "--run"])
    assert status == 0 and argv[2:5] == ["dictionary_learning_aligned", "reproduce", "main"] and "--recipe" not in argv
    assert "note: its records name no recipe" in capsys.readouterr().out


def test_a_replayed_store_holds_the_same_dictionaries(tmp_path, served, capsys):
    """A store made by `reproduce` (the tiny LLaMA of ``tiny_lm`` in place of SmolLM2, a one-size TopK grid),
    replayed into a new store with this tool, in-process: the same record ids, steps and metrics."""
    from dictionary_learning_aligned.records import iter_records
    from dictionary_learning_aligned.reproduce import main as reproduce_main

    corpus = str(ROOT / "dictionary_learning_aligned" / "corpus" / "wikipedia_en.jsonl.gz")
    flags = ["--scale", "smoke", "--device", "cpu", "--batch-size", "256", "--epochs", "3", "--eval-batches", "1",
             "--ce-batches", "1", "--ce-batch-size", "2", "--corpus", corpus, "--time-limit", "900"]
    assert reproduce_main(["tinyfull", "--results", str(tmp_path / "src"), "--cache", str(tmp_path / "c1"),
                           *flags]) == 0
    calls = []

    def in_process(argv):
        calls.append(argv)
        return reproduce_main(argv[argv.index("reproduce") + 1:])

    assert replay.main([str(tmp_path / "src"), "--results", str(tmp_path / "new"), "--cache", str(tmp_path / "c2"),
                        "--corpus", corpus, "--device", "cpu", "--run"], runner=in_process) == 0
    (argv,) = calls
    assert "--time-limit" not in argv and argv[argv.index("--recipe") + 1] == "scaled"
    src, new = (list(iter_records(tmp_path / d)) for d in ("src", "new"))
    assert [r["id"] for r in src] == [r["id"] for r in new] and len(src) == 2
    for a, b in zip(src, new):
        assert (a["steps"], a["batch_size"], a["recipe"]) == (b["steps"], b["batch_size"], b["recipe"])
        for metric in ("frac_variance_explained", "l0", "frac_recovered"):
            assert a["metrics"][metric] == pytest.approx(b["metrics"][metric], abs=1e-5), metric


@pytest.mark.parametrize("recorded, note", [
    ([("saebench", None)] * 2, "its records name recipe saebench without batch size"),
    ([("saebench", 2048), ("saebench", 4096)], "recipe saebench with batch size 2048, recipe saebench with batch "
                                               "size 4096"),
])
def test_the_note_names_what_the_records_hold(tmp_path, capsys, recorded, note):
    src = tmp_path / "src"
    for seed, (recipe, batch) in enumerate(recorded):
        write_record(src, make_record("relu", None, 0.02, seed, command=MAIN, recipe=recipe, batch_size=batch))
    status, (argv,) = _run([str(src), "--results", str(tmp_path / "new"), "--corpus", "c", "--run"])
    out = capsys.readouterr().out
    assert status == 0 and "--recipe" not in argv and note in out and "several" not in out


def test_the_figures_commands_it_prints_quote_paths_with_spaces(tmp_path, capsys):
    src = _store(tmp_path / "my src", [MAIN])
    status, _ = _run([str(src), "--results", str(tmp_path / "new store"), "--corpus", "c", "--run"])
    out = capsys.readouterr().out
    assert status == 0 and f"--results '{tmp_path / 'new store'}' --compare '{src}'`" in out


@pytest.mark.parametrize("python", ["python3.11", "python3.12 -m dictionary_learning_aligned.reproduce"])
def test_commands_recorded_with_a_versioned_python_are_read(tmp_path, python):
    """The module alias records ``Path(sys.executable).name``, which may be ``python3.11``."""
    command = MAIN.replace("python -m dictionary_learning_aligned reproduce", python.split()[0] + (
        " -m dictionary_learning_aligned.reproduce" if " " in python else " -m dictionary_learning_aligned reproduce"))
    src = _store(tmp_path / "src", [command])
    status, (argv,) = _run([str(src), "--results", str(tmp_path / "new"), "--corpus", "c", "--run"])
    assert status == 0 and argv[1:5] == ["-m", "dictionary_learning_aligned", "reproduce", "main"]
