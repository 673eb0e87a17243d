"""The one-driver lock between real processes: refused while held, taken over once the holder is
SIGKILLed, and a reader never mistaken for a driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from signlock.orchestrator.sweep_lock import SweepLockedError, driver_holder, driver_lock

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from signlock.orchestrator.sweep_lock import driver_lock\n"
    "with driver_lock(Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def test_a_second_driver_is_refused_and_a_dead_drivers_lock_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(SweepLockedError, match=rf"pid {holder.pid} since \S+$"),
            driver_lock(tmp_path),
        ):
            pass
        assert f"pid {holder.pid}" in (driver_holder(tmp_path) or "")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert driver_holder(tmp_path) is None
    with driver_lock(tmp_path):
        assert f"pid {os.getpid()}" in (driver_holder(tmp_path) or "")
    taken_over = capsys.readouterr().err
    assert f"taking over sweep {tmp_path.name} from {os.uname().nodename} pid {holder.pid}" in (
        taken_over
    )
    assert taken_over.strip().endswith("which is gone")
    assert (tmp_path / ".driver.lock").read_text() == ""  # released cleanly: nothing to take over
    with driver_lock(tmp_path):
        pass
    assert "taking over" not in capsys.readouterr().err
