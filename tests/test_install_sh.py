"""scripts/install.sh's requirements step: pip's report of dictionary-learning 0.1.0's unmet dependencies (that
package is installed without them on purpose) is followed by one line saying it is expected; pip's own output and
exit status are kept. Runs the script's function with a stand-in for pip (no network, nothing installed)."""

import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install.sh"
CONFLICT = ("ERROR: pip's dependency resolver does not currently take into account all the packages that are "
            "installed. This behaviour is the source of the following dependency conflicts.\n"
            "dictionary-learning 0.1.0 requires circuitsvis>=1.43.2, which is not installed.\n"
            "dictionary-learning 0.1.0 has requirement nnsight<0.4.0,>=0.3.0, but you have nnsight 0.8.1.\n")


def _install_requirements(tmp_path, stderr: str, status: int = 0) -> subprocess.CompletedProcess:
    """Run install.sh's ``install_requirements`` under ``set -euo pipefail`` with a pip that prints ``stderr``
    and exits with ``status``."""
    return _run_function(tmp_path, "install_requirements", "install_requirements -r requirements.txt", stderr, status)


def _function(name: str) -> str:
    """The text of install.sh's bash function ``name``."""
    function = re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", SCRIPT.read_text(), re.S | re.M)
    assert function, f"install.sh has no {name} function"
    return function.group(0)


def _run_function(tmp_path, name: str, call: str, stderr: str, status: int = 0) -> subprocess.CompletedProcess:
    """Run install.sh's function ``name`` (with ``pip_with_note``, which it calls) by the command ``call`` under
    ``set -euo pipefail``, then ``echo next step``, with a pip that echoes its arguments, prints ``stderr`` and exits
    with ``status``."""
    functions = "".join(_function(n) for n in ("pip_with_note", name))
    (tmp_path / "stderr.txt").write_text(stderr)
    pip = tmp_path / "pip"
    pip.write_text(f"#!/bin/sh\necho installed \"$@\"\ncat {tmp_path / 'stderr.txt'} >&2\nexit {status}\n")
    pip.chmod(0o755)
    body = (f"set -euo pipefail\nPIP=({pip})\npip_err={tmp_path / 'pip_err'}\n{functions}"
            f"{call}\necho next step\n")
    return subprocess.run(["bash", "-c", body], capture_output=True, text=True)


def test_the_conflict_report_about_dictionary_learning_is_said_to_be_expected(tmp_path):
    r = _install_requirements(tmp_path, CONFLICT)
    assert r.returncode == 0 and r.stdout == "installed install -q -r requirements.txt\nnext step\n"
    assert r.stderr.startswith(CONFLICT)  # pip's own lines, unchanged, first
    note = r.stderr[len(CONFLICT):]
    assert note.count("\n") == 1 and "dictionary-learning 0.1.0 is expected" in note
    assert "without its dependencies on purpose" in note


@pytest.mark.parametrize("stderr, status", [("", 0), ("ERROR: something else\n", 0), (CONFLICT, 1)])
def test_no_note_without_that_report_and_a_failing_pip_stops_the_script(tmp_path, stderr, status):
    r = _install_requirements(tmp_path, stderr, status)
    assert r.stderr == stderr  # nothing added
    assert (r.returncode != 0) == bool(status) and ("next step" in r.stdout) == (not status)


# what pip 26 shows of setuptools' note when it installs this package editable
EDITABLE_NOTE = ("  /tmp/pip-build-env-x/overlay/lib/python3.11/site-packages/setuptools/command/editable_wheel.py:354: "
                 "BuildBackendWarning: Editable installation.\n  !!\n\n"
                 "          ********************************************************************************\n"
                 "          Please be careful with folders in your working directory with the same\n"
                 "          name as your package as they may take precedence during imports.\n"
                 "          ********************************************************************************\n\n  !!\n")


def test_setuptools_editable_note_is_explained_in_one_line(tmp_path):
    r = _run_function(tmp_path, "install_package", "install_package", EDITABLE_NOTE)
    assert r.returncode == 0 and r.stdout == "installed install -q --no-deps -e .\nnext step\n"
    assert r.stderr.startswith(EDITABLE_NOTE)  # pip's own lines, unchanged, first
    note = r.stderr[len(EDITABLE_NOTE):]
    assert note.count("\n") == 1 and "setuptools' note above is informational" in note
    assert "dictionary_learning_aligned, figures and benchmarks" in note


@pytest.mark.parametrize("stderr, status", [("", 0), (EDITABLE_NOTE, 1)])
def test_no_explanation_without_the_note_and_a_failing_editable_install_stops_the_script(tmp_path, stderr, status):
    r = _run_function(tmp_path, "install_package", "install_package", stderr, status)
    assert r.stderr == stderr and (r.returncode != 0) == bool(status) and ("next step" in r.stdout) == (not status)
