"""tests/warm_start.py: a command forked from the warm server behaves as the same command started with
subprocess: its arguments, working folder, environment, sys.path, output, exit status and signals."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import warm_start
from tests.conftest import wait_until

SCRIPT = """
import json, os, sys, time
if sys.argv[1] == "sleep":
    print("started", flush=True)
    time.sleep(60)
seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), "path0": sys.path[0], "main": __name__}
print(json.dumps({**seen, "seen": os.environ.get("SEEN")}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "scripts" / "probe.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("start", [subprocess.run, warm_start.run], ids=["subprocess", "warm_start"])
def test_a_script_sees_what_a_fresh_interpreter_would(start, script, tmp_path):
    env = {**os.environ, "SEEN": "yes"}
    command = [sys.executable, str(script), "print", "3"]
    result = start(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 3 and result.stderr == "to stderr\n"
    seen = json.loads(result.stdout)
    assert seen == {
        "argv": ["print", "3"],
        "cwd": str(tmp_path),
        "path0": str(script.parent),
        "seen": "yes",
        "main": "__main__",
    }


@pytest.mark.parametrize("start", [subprocess.run, warm_start.run], ids=["subprocess", "warm_start"])
def test_code_sees_what_python_c_would(start, tmp_path):
    env = {**os.environ, "SEEN": "code"}
    result = start(
        [sys.executable, "-c", SCRIPT, "print", "4"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 4 and result.stderr == "to stderr\n"
    seen = json.loads(result.stdout)
    assert seen == {
        "argv": ["print", "4"],
        "cwd": str(tmp_path),
        "path0": "",
        "seen": "code",
        "main": "__main__",
    }


def test_a_module_runs_as_with_python_m(tmp_path):
    result = warm_start.run([sys.executable, "-m", "json.tool", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout and "json.tool" in result.stdout


def test_a_signal_ends_the_command_as_it_would_a_process_of_its_own(script):
    process = warm_start.Popen([sys.executable, str(script), "sleep", "0"], stdout=subprocess.PIPE, text=True)
    wait_until(lambda: "started" in process.output()[0], process, "the script started")
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def test_a_command_past_its_timeout_is_killed_and_says_what_it_printed(script):
    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        warm_start.run([sys.executable, str(script), "sleep", "0"], capture_output=True, text=True, timeout=2)
    assert timed_out.value.stdout == "started\n"


def test_what_the_server_read_as_it_started_cannot_be_changed_per_command(script):
    env = {**os.environ, "OMP_NUM_THREADS": "7"}
    with pytest.raises(ValueError, match="OMP_NUM_THREADS: use subprocess"):
        warm_start.run([sys.executable, str(script), "print", "0"], env=env)
