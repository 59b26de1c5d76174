"""Cold start: CPU seconds from ``import intsim`` to the first ``intsim demo`` result, on an empty numba cache
and on a filled one (issue 17: cold under 10 s, warm under 1.5 s).

Every run is a fresh Python process, timed by the CPU seconds (user + sys) it and its children spent
(``resource.getrusage(RUSAGE_CHILDREN)``), which a loaded machine inflates far less than wall time.
A cold run gets its own empty ``NUMBA_CACHE_DIR``; the warm runs share one that a first, untimed run
filled.  Python's bytecode is cached beforehand in a private ``PYTHONPYCACHEPREFIX``, as an installed
package has it.  The cases run interleaved, each ``--rounds`` times, and the table gives the median.

``--tree DIR`` times another checkout of the repository (e.g. ``git archive <commit> | tar -x -C DIR``)
in place of the installed intsim: its ``intsim`` package, with ``kernels/`` and ``models/`` mapped to
``intsim.kernels`` and ``intsim.models`` as the installed layout has them.  Given several times, the trees
run interleaved, each case and round one after the other, so that they see the same load.

    python benchmarks/bench_cold_start.py [--rounds 3] [--tree DIR --label before ...] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

# Run in the child before anything of intsim: with a tree given, its packages shadow the installed ones.
_BOOTSTRAP = """
import importlib.util, sys
tree = {tree!r}
if tree:
    sys.path.insert(0, tree)

    class _TreeLayout:
        # intsim.kernels and intsim.models live in kernels/ and models/ of a checkout
        @staticmethod
        def find_spec(name, path=None, target=None):
            folder = {{"intsim.kernels": "kernels", "intsim.models": "models"}}.get(name)
            if folder is None:
                return None
            return importlib.util.spec_from_file_location(name, f"{{tree}}/{{folder}}/__init__.py",
                                                          submodule_search_locations=[f"{{tree}}/{{folder}}"])

    sys.meta_path.insert(0, _TreeLayout)
"""

# ``intsim demo`` as the command runs it: ``python -m intsim demo`` (the ``intsim`` script runs the same code).
CASES = {
    "import intsim": "import intsim",
    "intsim demo": "import runpy, sys; sys.argv = ['intsim', 'demo']; runpy.run_module('intsim', run_name='__main__')",
}


def _cpu_seconds(code: str, tree: str | None, env: dict) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", _BOOTSTRAP.format(tree=tree) + code], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _cpu_name() -> str:
    """The CPU's model name and LLVM's name for its micro-architecture (what numba compiles for)."""
    import llvmlite.binding as llvm

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({llvm.get_host_cpu_name()})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[],
                        help="a checkout to time instead of the installed intsim (repeat to compare, interleaved)")
    parser.add_argument("--label", action="append", default=[], help="each tree's name in the table, in order")
    parser.add_argument("--markdown", help="append the table to this markdown file")
    args = parser.parse_args(argv)
    trees = [os.path.abspath(tree) for tree in args.tree] or [None]
    labels = args.label + [os.path.basename(tree) if tree else "this tree" for tree in trees[len(args.label):]]
    scratch = tempfile.mkdtemp(prefix="intsim-cold-start-")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "NUMBA_CACHE_DIR")}
    env.update(INTSIM_PROGRESS="0", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPYCACHEPREFIX=os.path.join(scratch, "pyc"))
    warm_cache = os.path.join(scratch, "numba-warm")
    # Untimed: Python's bytecode, and the warm runs' numba cache (numba keys it by source path: one serves all).
    for tree in trees:
        _cpu_seconds(CASES["intsim demo"], tree, {**env, "NUMBA_CACHE_DIR": warm_cache})
    times = {}
    for round_ in range(args.rounds):
        for case, code in CASES.items():
            for state in ("cold", "warm"):
                for k, (tree, label) in enumerate(zip(trees, labels)):
                    cache = warm_cache if state == "warm" else os.path.join(scratch, f"numba-cold-{round_}-{case}-{k}")
                    seconds = _cpu_seconds(code, tree, {**env, "NUMBA_CACHE_DIR": cache})
                    times.setdefault((label, case, state), []).append(seconds)
                    print(f"{label}: {case}, {state} numba cache: {seconds:.2f} CPU s", flush=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"\n### {' vs '.join(labels)} ({when}, {_cpu_name()}, {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f} at the end)\n",
             "| tree | case | numba cache | CPU s, median | runs |", "|---|---|---|---|---|"]
    for (label, case, state), values in sorted(times.items(), key=lambda item: labels.index(item[0][0])):
        lines.append(f"| {label} | {case} | {state} | {statistics.median(values):.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in values)} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write(table)

if __name__ == "__main__":
    main()
