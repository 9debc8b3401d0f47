"""The testnet launcher's control socket (node/fleet_control.py), without node processes."""

from __future__ import annotations

import time

import pytest

from node.fleet_control import ControlError, ControlServer


def test_a_second_launcher_is_refused_and_the_first_prints_no_traceback(tmp_path, capfd):
    first = ControlServer(fleet=None, directory=tmp_path)
    first.start()
    try:
        for _ in range(2):
            with pytest.raises(ControlError, match="a testnet launcher already runs"):
                ControlServer(fleet=None, directory=tmp_path)
        time.sleep(0.2)  # the probes' handlers answer into closed sockets meanwhile
        assert "Traceback" not in capfd.readouterr().err
    finally:
        first.close()
