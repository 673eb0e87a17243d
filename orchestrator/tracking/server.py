"""``signlock server`` / ``signlock ui``: MLflow's own server as a child process, on 127.0.0.1
unless told, that never outlives signlock's process (its process group is stopped as a whole,
by signlock or by a guard process when signlock is killed outright)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from signlock.orchestrator.tracking.uris import local_store_path
from signlock.trainables.errors import ConfigError

BACKEND_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://")


def mlflow_server_command(
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    ui_only: bool = False,
    workers: int | None = None,
) -> list[str]:
    """The ``mlflow server`` (or ``mlflow ui``) command line for these stores. A UI for one
    person runs one uvicorn worker unless told (MLflow's default of 4 kept it from answering for
    tens of seconds); a tracking server keeps MLflow's default for concurrent trials."""
    if not backend_store_uri.startswith(BACKEND_SCHEMES):
        raise ConfigError(
            "--backend-store-uri", backend_store_uri, "one of " + ", ".join(BACKEND_SCHEMES)
        )
    if not 0 < port < 65536:
        raise ConfigError("--port", port, "1..65535")
    workers = 1 if workers is None and ui_only else workers
    if workers is not None and workers < 1:
        raise ConfigError("--workers", workers, "at least 1")
    if backend_store_uri.startswith("postgresql://"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; signlock[postgres] is psycopg2.
        backend_store_uri = "postgresql+psycopg2://" + backend_store_uri.removeprefix(
            "postgresql://"
        )
    if backend_store_uri.startswith("sqlite:///"):
        Path(backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui" if ui_only else "server"]
    command += ["--backend-store-uri", backend_store_uri, "--host", host, "--port", str(port)]
    command += ["--workers", str(workers)] if workers else []
    if ui_only:
        return [*command, "--default-artifact-root", _as_uri(artifacts_destination)]
    return [*command, "--artifacts-destination", _as_uri(artifacts_destination)]


def _as_uri(location: str) -> str:
    if "://" in location:
        return location
    path = Path(location).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


SERVER_STOP_TIMEOUT_S = 30.0
ORPHAN_STOP_TIMEOUT_S = 10  # MLflow's job consumers can take a minute to heed SIGTERM
SERVER_SLOW_START_S = 60.0  # say where to look when MLflow has not answered by then
SERVER_LOG_NAME = "mlflow-server.log"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Run in a session of its own beside MLflow's, this stops MLflow's whole process group once
# signlock's process has ended however it ended (SIGKILL included, which no handler sees):
# `read` returns at end of file, when signlock, the only writer of its stdin, is gone.
# $0 is the group, $1 the seconds between SIGTERM and SIGKILL.
_GROUP_GUARD = """read -r _
kill -s TERM -- "-$0" 2>/dev/null || exit 0
i=0
while [ "$i" -lt "$1" ] && kill -s 0 -- "-$0" 2>/dev/null; do sleep 1; i=$((i + 1)); done
kill -s KILL -- "-$0" 2>/dev/null
"""


def server_environment(*, ui_only: bool) -> dict[str, str]:
    """The environment MLflow's server runs in: unbuffered output (its log is a file), and for a
    UI no job consumers (7 Huey processes for GenAI evaluation jobs) unless asked for."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ui_only:
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def server_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to ``host`` (any address: loopback)."""
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_log_path(backend_store_uri: str, default_dir: Path) -> Path:
    """MLflow's own output goes beside a sqlite store, else into ``default_dir``."""
    store = local_store_path(backend_store_uri)
    folder = store.parent if store is not None else default_dir
    return (folder / SERVER_LOG_NAME).resolve()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_foreground(
    command: list[str], *, url: str, log_path: Path, env: Mapping[str, str] | None = None
) -> int:
    """Run the server until Ctrl-C or SIGTERM, then stop it with everything it started (MLflow's
    server runs uvicorn workers and job consumers in processes of its own: they all live in the
    server's process group, which is stopped as a whole — also when signlock is killed outright:
    a guard process does it then, and on Linux the server gets SIGTERM when signlock ends).
    MLflow's output goes to ``log_path``; the URL is printed once the server answers there."""
    print(f"signlock: MLflow's output goes to {log_path}", file=sys.stderr, flush=True)
    process = _start_logged(command, log_path, env)
    guard = _guard_group(process.pid)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _announce_when_answering(process, url, log_path)
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    code = _stop_group(process)  # also the workers that outlive a server that ended by itself
    _end_guard(guard)
    return code


def _start_logged(
    command: list[str], log_path: Path, env: Mapping[str, str] | None
) -> subprocess.Popen:
    import shlex

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"\n{time.strftime('%Y-%m-%d %H:%M:%S')} signlock: {shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(
            command,
            env=dict(env if env is not None else os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches signlock only, which stops the group
            preexec_fn=_parent_death_signal(),
        )


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when signlock's process ends
    (``PR_SET_PDEATHSIG``; MLflow's server forwards it to its uvicorn); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import functools

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here, not in the forked child
    return functools.partial(_arm_parent_death_signal, prctl, os.getpid())


def _arm_parent_death_signal(prctl: Callable[..., int], parent: int) -> None:
    prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:  # signlock ended before the signal was armed
        os._exit(1)


def _guard_group(pgid: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["/bin/sh", "-c", _GROUP_GUARD, str(pgid), str(ORPHAN_STOP_TIMEOUT_S)],
        stdin=subprocess.PIPE,  # signlock holds the only write end: it closes when signlock ends
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of reach of a signal to signlock's group
    )


def _end_guard(guard: subprocess.Popen) -> None:
    guard.kill()  # signlock stopped the group itself
    guard.wait()
    if guard.stdin is not None:
        guard.stdin.close()


def _announce_when_answering(process: subprocess.Popen, url: str, log_path: Path) -> None:
    """Print the URL once the server answers HTTP there; if it ends first, the end of its log."""
    started = time.monotonic()
    hinted = False
    while process.poll() is None:
        if _answers(url):
            print(f"signlock: MLflow {_server_kind(process)} at {url}", flush=True)
            return
        if not hinted and time.monotonic() - started > SERVER_SLOW_START_S:
            print(f"signlock: {url} does not answer yet; see {log_path}", file=sys.stderr)
            hinted = True
        time.sleep(0.25)
    tail = log_path.read_text(errors="replace").splitlines()[-20:]
    print(f"signlock: MLflow ended with status {process.returncode} before answering; "
          f"the end of {log_path}:", *tail, sep="\n", file=sys.stderr)  # fmt: skip


def _server_kind(process: subprocess.Popen) -> str:
    return "UI" if process.args[1] == "ui" else "tracking server"


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: a refusal by MLflow's host check
    is an answer), asked directly, never through a proxy from the environment."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/health", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _stop_group(process: subprocess.Popen) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their server
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()
