"""Static typing: mypy over the package (clean, with pyproject.toml's [tool.mypy]) and over
tests/typing_samples/wrong_calls.py, whose wrong calls must each be reported with the error code
its ``# E: code`` comment names, and nothing else. pyright (in the dev extra) checks the same
file.

mypy runs as a subprocess with its incremental cache in .mypy_cache (ignored by git): a few
seconds cold, about one warm.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "typing_samples" / "wrong_calls.py"
EXPECTED = re.compile(r"#\s*E:\s*([a-z-]+)\s*$")
REPORTED = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")

pytest.importorskip("mypy")


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache"),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _expected() -> set[tuple[int, str]]:
    return {(n, m.group(1)) for n, line in enumerate(SAMPLE.read_text().splitlines(), 1)
            if (m := EXPECTED.search(line))}


def test_the_package_is_clean():
    run = _mypy()  # [tool.mypy] files = django_kiq
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success: no issues found" in run.stdout


def test_wrong_calls_are_reported():
    run = _mypy("--follow-imports=silent", str(SAMPLE.relative_to(ROOT)))
    reported = {(int(m["line"]), m["code"]) for line in run.stdout.splitlines()
                if (m := REPORTED.match(line)) and m["path"].endswith("wrong_calls.py")}
    expected = _expected()
    assert len(expected) >= 14
    assert reported == expected, run.stdout
    assert run.returncode == 1


# The dev extra installs pyright (PyPI's wrapper, which runs npm's pyright with the machine's
# Node.js) beside this interpreter; the venv's bin directory need not be on PATH.
PYRIGHT = shutil.which("pyright") or shutil.which("pyright", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(PYRIGHT is None, reason="pyright is not installed")
def test_pyright_reports_the_same_lines():
    run = subprocess.run([PYRIGHT, str(SAMPLE)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    lines = {int(m.group(1)) for m in re.finditer(r"wrong_calls\.py:(\d+):\d+ - error", run.stdout)}
    assert lines == {n for n, _ in _expected()}, run.stdout
