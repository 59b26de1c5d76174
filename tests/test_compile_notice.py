"""The first-run compile notice (:mod:`intsim.runtime.compile_notice`) and ``intsim selftest --warm``."""

from __future__ import annotations

import time

import numpy as np
import pytest
from numba import njit

from intsim import progress
from intsim.cli import main
from intsim.kernels.isa import current_isa
from intsim.runtime.compile_notice import NOTICE


def _probe(module: str):
    def probe(x):
        return x + np.int32(1)

    probe.__module__ = module
    return njit(probe)  # no cache: compiles in every process


def test_notice_names_the_isa_and_the_kernel(monkeypatch, capsys):
    monkeypatch.setenv("INTSIM_PROGRESS", "1")
    monkeypatch.setattr(NOTICE, "announced", False)
    before = NOTICE.compiled
    assert _probe("intsim.kernels.probe_module")(np.int32(2)) == 3
    err = capsys.readouterr().err
    assert f"compiling kernels for {current_isa().name} (first run only)\u2026\n" in err
    assert f"[{before + 1}] kernels.probe_module.probe ..." in err
    assert NOTICE.compiled == before + 1


def test_notice_is_silent_for_other_code_and_without_progress(monkeypatch, capsys):
    monkeypatch.setattr(NOTICE, "announced", False)
    before = NOTICE.compiled
    monkeypatch.setenv("INTSIM_PROGRESS", "1")
    _probe("someone_else")(np.int32(2))
    monkeypatch.setenv("INTSIM_PROGRESS", "0")
    _probe("intsim.kernels.probe_quiet")(np.int32(2))
    assert capsys.readouterr().err == ""
    assert NOTICE.compiled == before + 1  # counted, not drawn


@pytest.mark.slow
def test_selftest_warm_compiles_into_the_cache(capsys):
    assert main(["selftest", "--warm"]) == 0
    assert "kernel(s) compiled in" in capsys.readouterr().out


def test_notice_draws_below_a_running_bar_which_waits(monkeypatch, capsys):
    """A first compile inside ``comparing ...``: the notice and the kernel's line each get a line of their
    own, and the outer bar, whose heartbeat keeps ticking, draws nothing until the kernel's line closes."""
    monkeypatch.setenv("INTSIM_PROGRESS", "1")
    monkeypatch.setattr(NOTICE, "announced", False)
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.005)
    with progress.Progress(2, True, "comparing") as bar:
        time.sleep(0.03)
        bar.update(1)
        _probe("intsim.kernels.probe_nested")(np.int32(2))  # compiles for tens of heartbeats
        bar.update(2)
    lines = capsys.readouterr().err.split("\n")
    assert lines[-1] == ""
    draws = [[d.strip() for d in line.split("\r") if d] for line in lines[:-1]]
    assert len(draws) == 4, lines
    assert draws[1] == [f"compiling kernels for {current_isa().name} (first run only)\u2026"]
    assert len(draws[2]) >= 2 and all(d.startswith(f"[{NOTICE.compiled}] kernels.probe_nested.probe ...")
                                      for d in draws[2])
    assert all(d.startswith("comparing [") for d in draws[0] + draws[3])
    assert len(draws[0]) >= 2  # it ticked before the compile
    assert draws[3][-1].startswith("comparing [##############################] 2/2")
