"""`python -m vae_lab.train ...` and the other commands for the tests, each run in a process of its own
forked from a server that has imported torch, torchvision, Hydra and matplotlib already: the same command
line, working folder and environment, its own pid, signals, exit status and output, without the seconds
a fresh interpreter spends importing them (about five on one core: most of a tiny run).

    result = warm_start.run([python(), "-m", "vae_lab.train", ...], capture_output=True, text=True)
    process = warm_start.Popen([python(), "-m", "vae_lab.train", ...])  # poll, wait, send_signal, kill
    warm_start.run([python(), "-c", "import vae_lab; ...", "argument"])  # as python -c
    warm_start.run_as_torchrun([python(), "-m", "vae_lab.train", ...])  # its two workers, as torchrun's

They take the part of subprocess.run and subprocess.Popen that the tests use. Nothing of vae_lab is
imported before the fork, so each command reads the code as it stands; the server reads the environment
once, as it starts (torch's thread count included). Tests of what a fresh interpreter does (its imports,
an installed wheel) start one with subprocess.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from functools import cache
from pathlib import Path
from typing import Optional

# what every command imports first and takes the longest to: imported once, by the server
PRELOAD = (
    "torch",
    "torch._dynamo",
    "torchvision",
    "matplotlib.pyplot",
    "hydra.main",
    "omegaconf",
    "scipy.stats",
)
# what an interpreter reads of its environment as it starts, read by the server once for every command
READ_AT_START = ("PYTHONPATH", "PYTHONHOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STATUS = "status"  # the exit status, written into the command's folder when it has ended


@cache
def _server() -> tuple[subprocess.Popen, dict]:
    """This process's fork server (requests on its stdin, one JSON line each; pids back, one a line) and
    what it read of the environment as it started."""
    server = subprocess.Popen(
        [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    return server, {key: os.environ.get(key) for key in READ_AT_START}


class Popen:
    """A command started by the fork server; the part of subprocess.Popen that the tests use."""

    def __init__(
        self, args, stdout=None, stderr=None, env=None, cwd=None, start_new_session=False, text=False
    ):
        python, *command = [str(arg) for arg in args]
        if python != sys.executable or not command or (command[0] in ("-m", "-c") and len(command) < 2):
            raise ValueError(
                "warm_start runs `python -m module ...`, `python -c code ...` or `python script.py ...`, "
                f"not {args!r}"
            )
        env = dict(os.environ if env is None else env)
        server, started_with = _server()
        differs = [key for key in READ_AT_START if env.get(key) != started_with[key]]
        if differs:
            raise ValueError(f"the fork server started with other {', '.join(differs)}: use subprocess")
        self.args, self.text, self._piped = args, text, (stdout == subprocess.PIPE, stderr == subprocess.PIPE)
        self.folder = Path(tempfile.mkdtemp(prefix="warm_start_"))
        weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)  # its output, once unread
        for name in ("stdout", "stderr"):  # readable from the start, as a pipe is
            (self.folder / name).touch()
        request = {
            "command": command,
            "cwd": str(Path(cwd or os.getcwd()).resolve()),
            "env": env,
            "folder": str(self.folder),
            "new_session": start_new_session,
        }
        server.stdin.write(json.dumps(request) + "\n")
        self.pid = int(server.stdout.readline())
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        status = self.folder / STATUS
        if self.returncode is None and status.is_file():
            self.returncode = int(status.read_text())
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: Optional[float] = None) -> tuple:
        """Wait for the end; give back (stdout, stderr), each None where it was not asked for with PIPE."""
        self.wait(timeout)
        output = self.output(self.text)
        return tuple(stream if piped else None for stream, piped in zip(output, self._piped, strict=True))

    def output(self, text: bool = True) -> tuple:
        """The command's (stdout, stderr) so far, as text or bytes."""
        read = Path.read_text if text else Path.read_bytes
        return read(self.folder / "stdout"), read(self.folder / "stderr")


def run(args, capture_output=False, text=False, timeout=None, env=None, cwd=None):
    """Run a command to its end; the part of subprocess.run that the tests use."""
    process = Popen(args, env=env, cwd=cwd)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise subprocess.TimeoutExpired(args, timeout, *process.output(text)) from None
    stdout, stderr = process.output(text)
    if not capture_output:  # where subprocess.run would have let them through
        sys.stdout.write(stdout if text else stdout.decode())
        sys.stderr.write(stderr if text else stderr.decode())
        stdout = stderr = None
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def run_as_torchrun(
    args, processes: int = 2, capture_output=False, text=False, timeout=None, env=None, cwd=None
):
    """Run `python -m module ...` in `processes` processes with the environment that `torchrun
    --standalone --nproc_per_node=N` gives its workers (RANK, LOCAL_RANK, WORLD_SIZE, ..., a free
    MASTER_PORT on this host), each forked from the server instead of started fresh by torchrun's agent;
    where one fails, the others are stopped, as the agent stops them. Give back one CompletedProcess: the
    worst exit status and the outputs of process 0, 1, ... one after the other."""
    import socket

    with socket.socket() as probe:  # a port free now, for process 0's store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = dict(os.environ if env is None else env)
    workers = []
    for rank in range(processes):
        torchrun_sets = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": processes}
        torchrun_sets |= {"LOCAL_WORLD_SIZE": processes, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        workers.append(Popen(args, env=base | {k: str(v) for k, v in torchrun_sets.items()}, cwd=cwd))
    deadline = None if timeout is None else time.monotonic() + timeout
    while any(worker.poll() is None for worker in workers):
        failed = any(worker.poll() not in (None, 0) for worker in workers)
        if failed or (deadline is not None and time.monotonic() > deadline):
            for worker in workers:
                worker.kill()
            if not failed:
                for worker in workers:
                    worker.wait()
                raise subprocess.TimeoutExpired(args, timeout)
        time.sleep(0.02)
    outputs = [worker.output(text) for worker in workers]
    empty = "" if text else b""
    stdout, stderr = (empty.join(output[i] for output in outputs) for i in (0, 1))
    if not capture_output:
        sys.stdout.write(stdout if text else stdout.decode())
        sys.stderr.write(stderr if text else stderr.decode())
        stdout = stderr = None
    return subprocess.CompletedProcess(args, max(worker.returncode for worker in workers), stdout, stderr)


def _become(request: dict, fresh_sys_path: list[str]) -> None:
    """In the forked child: become `python <command>` in its folder with its environment, then exit."""
    import atexit
    import runpy
    import threading
    import traceback
    import types

    if request["new_session"]:
        os.setsid()
    folder = Path(request["folder"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(folder / name, os.O_WRONLY | os.O_APPEND), fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    command = request["command"]
    code = 0
    try:
        if command[0] == "-m":  # as `python -m`: the working folder first on sys.path
            sys.argv, sys.path[:] = command[1:], [request["cwd"], *fresh_sys_path]
            runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        elif command[0] == "-c":  # as `python -c`: the working folder first, as ''
            sys.argv, sys.path[:] = ["-c", *command[2:]], ["", *fresh_sys_path]
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(command[1], "<string>", "exec"), main.__dict__)
        else:  # as `python script.py`: the script's folder first
            script = Path(command[0]).resolve()
            sys.argv, sys.path[:] = command, [str(script.parent), *fresh_sys_path]
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # what the interpreter does at its end: join the threads (loky's executors stop their workers
        # there), then the exit functions (logging's flush, the trackers')
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _serve() -> None:
    """Import PRELOAD, then fork a child for each request until stdin ends; write each one's status."""
    import importlib

    fresh_sys_path = sys.path[1:]  # less this file's folder
    for name in PRELOAD:
        importlib.import_module(name)
    folders: dict[int, Path] = {}
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], 0.05)
        if readable:
            line = sys.stdin.readline()
            if not line:
                return  # the tests' process has ended; running children go on alone
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _become(request, fresh_sys_path)
            folders[pid] = Path(request["folder"])
            print(pid, flush=True)
        for pid in list(folders):
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                written = folders.pop(pid) / f"{STATUS}.part"
                written.write_text(str(os.waitstatus_to_exitcode(status)))
                written.rename(written.with_name(STATUS))


if __name__ == "__main__":
    _serve()
