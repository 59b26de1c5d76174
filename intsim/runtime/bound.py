"""A run plan bound to preallocated arrays for one set of input shapes: the nodes' kernels as fixed calls.

:class:`~intsim.runtime.plan.RunPlan` looks up and allocates per node and per
call, a few microseconds of Python each: for the small models that is most of
a run.  A :class:`BoundRun` is built once per input signature, from what the
plan's first run with those shapes recorded (every tensor's shape and dtype,
and which outputs are views of an input):

* every tensor gets an array, shared in turn by tensors whose lifetimes do not
  overlap (the same bytes, reused once the last reader is done), so the memory
  stays that of the live tensors, as in the plan;
* a step whose outputs are views of its inputs (reshape, flatten, a transpose
  that moves only unit axes) becomes that view, made once: nothing runs;
* a step that offers ``calls`` (:meth:`intsim.graph.ops.Op.bind`: the fused
  conv and fully-connected kernels) becomes those numba calls with their
  arguments fixed, so a run is one Python call per kernel; each call goes to
  the compiled overload for its arguments' types, looked up once here (the
  arguments never change, so the dispatcher's per-call typing of every
  argument, about a third of a small kernel's call cost, is not repeated);
  a bound run is made for one thread count (:func:`~intsim.kernels.threads.set_threads`):
  each layer that splits among that many threads
  (:func:`~intsim.kernels.threads.splits_among`) takes its threaded core,
  decided once here, the others their serial core;
* any other step runs as in the plan and its outputs are copied into their arrays.

After :data:`COMPILE_AFTER` runs, each stretch of consecutive numba calls
becomes one compiled function (:func:`intsim.runtime.compiled.compile_calls`):
no Python and no argument conversion between the kernels, a third to a half
of a small model's run.  It costs a compilation of 0.1-0.25 s of CPU per
bound run for the shipped models (nothing is cached on disk: the function
holds the arrays' addresses), which pays off only over thousands of runs
(benchmarks/results/dispatch.md): a model run a few times never compiles,
one that serves a loop does.

The results are those of the plan, bit for bit: the same kernels, the same
arguments (and no result depends on the thread count).  A bound run serves one
caller at a time; the plan keeps a pool of them per signature and thread
count, so that threads calling one model each take their own.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba.core.dispatcher import Dispatcher

from intsim.jit import compiled_entry
from intsim.kernels.threads import apply_threads
from intsim.runtime.compiled import compile_calls

# Runs of one bound run after which its numba calls are compiled into one function.
COMPILE_AFTER = 1000


class BoundRun:
    """The plan's steps over fixed arrays for the input shapes of ``layouts``.

    Parameters
    ----------
    plan : RunPlan
    layouts : list
        Per step of ``plan.steps``: ``[(shape, dtype, aliased read slot or None)]`` of its outputs, as
        the plan's first run with these input shapes found them (a slot only where every output of
        the step is a view of one of its inputs).
    input_layouts : list of (shape, dtype)
        Of the graph inputs.
    threads : int
        numba's thread count for the run's threaded kernels (set on the calling thread by each run).
    """

    def __init__(self, plan, layouts, input_layouts, threads=1):
        self.plan, self.threads = plan, threads
        self.overflows = []
        arrays = [None] * plan.n_slots
        root = {}  # slot -> the slot whose bytes it uses
        last_read = {}
        for index, (_, node, reads, writes, _) in enumerate(plan.steps):
            for s, (_, _, alias) in zip(writes, layouts[index]):
                root[s] = root.get(alias, alias) if alias is not None else s
            for s in reads:
                last_read[root.get(s, s)] = index
        for s in plan.input_slots:
            root.setdefault(s, s)
        kept = {root[s] for s in plan.output_slots}
        free = {}  # nbytes -> spare byte arrays
        self.input_arrays = []
        for s, (shape, dtype) in zip(plan.input_slots, input_layouts):
            arrays[s] = self._take(free, shape, dtype)
            self.input_arrays.append(arrays[s])
        self.calls = []
        for index, (step, node, reads, writes, _) in enumerate(plan.steps):
            inputs = [arrays[s] for s in reads]
            views = all(alias is not None for _, _, alias in layouts[index])
            if views:  # made once from the inputs' arrays: nothing to run
                outputs, _ = step(inputs)
                for s, value in zip(writes, outputs):
                    arrays[s] = value
            else:
                for s, (shape, dtype, _) in zip(writes, layouts[index]):
                    arrays[s] = self._take(free, shape, dtype)
                outputs = [arrays[s] for s in writes]
                calls = getattr(step, "calls", None)
                calls = calls(inputs, outputs, threads) if calls is not None else None
                self.calls += calls if calls is not None else [(self._copying(step, node, inputs, outputs), ())]
            for s in {root[s] for s in reads}:
                if last_read[s] == index and s not in kept:
                    free.setdefault(arrays[s].nbytes, []).append(arrays[s])
        self.output_arrays = [arrays[s] for s in plan.output_slots]
        self._dispatched = self.calls  # kept for compile()
        self.calls = [(_compiled(function, arguments), arguments) for function, arguments in self.calls]
        self.runs = 0

    @staticmethod
    def _take(free, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        spare = free.get(nbytes)
        if spare:
            return spare.pop().view(np.uint8).reshape(-1).view(dtype).reshape(shape)
        return np.empty(shape, dtype)

    def _copying(self, step, node, inputs, outputs):
        # A step without fixed calls: run it, note its overflows as the plan does, copy its outputs in.
        # The step sets numba's thread count for its own kernels: the run's is set again after it.
        plan, overflows, threads = self.plan, self.overflows, self.threads

        def run():
            values, stats = step(inputs)
            if threads > 1:
                apply_threads(threads)
            if stats.get("overflow_count", 0):
                plan.note_overflow(node, stats, overflows)
            for out, value in zip(outputs, values):
                np.copyto(out, value)

        return run

    def run(self, arrays, finish, write=None):
        """``finish(outputs)`` of the graph's outputs from ``arrays`` (the inputs, checked and of the
        recorded shapes and dtypes), or with ``write`` from what ``write(targets)`` writes into the
        run's own input arrays (no copy); ``finish`` must not keep the output arrays, which the next
        run overwrites."""
        self.runs += 1
        if self.runs == COMPILE_AFTER:
            self.compile()
        if self.threads > 1:
            apply_threads(self.threads)
        self.overflows.clear()
        if write is not None:
            write(self.input_arrays)
        else:
            for target, value in zip(self.input_arrays, arrays):
                np.copyto(target, value)
        for function, arguments in self.calls:
            function(*arguments)
        return finish(self.output_arrays)

    def compile(self):
        """Make each stretch of two or more consecutive numba calls one compiled function
        (:func:`~intsim.runtime.compiled.compile_calls`); a stretch it cannot compile stays as it is."""
        calls, stretch = [], []
        for function, arguments in self._dispatched + [(None, ())]:
            if isinstance(function, Dispatcher):
                stretch.append((function, arguments))
                continue
            compiled = _compile_or_none(stretch) if len(stretch) > 1 else None
            calls += [(compiled, ())] if compiled is not None else [(_compiled(f, a), a) for f, a in stretch]
            stretch = []
            if function is not None:
                calls.append((function, arguments))
        self.calls = calls


def _compile_or_none(stretch):
    # compile_calls leans on numba internals (a compiled function's address and calling convention):
    # where a numba release moves them, the run keeps its per-call dispatch, which gives the same
    # results, and says so once.
    try:
        return compile_calls(stretch)
    except Exception as error:  # noqa: BLE001 (any failure of the optional compilation step)
        if not _COMPILE_FAILED:
            _COMPILE_FAILED.append(error)
            warnings.warn(f"intsim: the bound run's kernel calls could not be compiled into one function "
                          f"({type(error).__name__}: {error}); they run one by one, with the same results",
                          RuntimeWarning, stacklevel=3)
        return None


_COMPILE_FAILED = []


def _compiled(function, arguments):
    """The compiled overload of numba ``function`` for the types of ``arguments``
    (:func:`intsim.jit.compiled_entry`); anything else is returned as it is."""
    return compiled_entry(function, arguments) if isinstance(function, Dispatcher) else function
