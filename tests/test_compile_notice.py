"""The first-run compile notice (:mod:`intsim.runtime.compile_notice`) and ``intsim selftest --warm``."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

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
