"""A bound run's kernel calls as one compiled function: no Python, no argument unboxing between kernels.

A :class:`~intsim.runtime.bound.BoundRun` repeats fixed numba calls over fixed
arrays.  Called from Python, each call pays for its arguments on every run:
the wrapper turns every array argument into a numba array (a meminfo
allocated and freed per array, about 40 ns each, ten arrays for a GEMM
call), which for the small models is a fifth of a run.  Here a run of such
calls becomes one numba function with no arguments: every array is built in
the function from its address, shape and strides (constants: the bound run
keeps the arrays alive and never moves them), every scalar is a constant, and
each kernel is called through the address of its compiled native function
(the same machine code the dispatcher would run, not a copy: nothing is
recompiled, only the short caller).

No source text is generated: the caller is a numba intrinsic whose code
generation walks the calls, closed over as Python objects.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.dispatcher import Dispatcher
from numba.core.typing.typeof import Purpose, typeof
from numba.extending import intrinsic

_SCALARS = (types.Integer, types.Float, types.Boolean)


def compile_calls(calls):
    """A function of no arguments that makes ``calls`` (``[(numba dispatcher, arguments)]``) in order,
    exactly as ``function(*arguments)`` would, or ``None`` where some call cannot be made so (not a
    dispatcher, an argument other than an array, a scalar or a tuple of them, a result other than
    a scalar or a tuple of scalars).  The caller keeps the arguments' arrays alive and unmoved while it uses the function."""
    entries = []
    for function, arguments in calls:
        if not isinstance(function, Dispatcher):
            return None
        argument_types = tuple(typeof(value, Purpose.argument) for value in arguments)
        if not all(_constant_kind(t) for t in argument_types):
            return None
        function.compile(argument_types)
        result = function.overloads[argument_types]
        signature = result.signature
        if not _plain_result(signature.return_type):  # dropped unseen: nothing to release
            return None
        address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
        if not address:
            return None
        entries.append((address, signature, arguments))
    return _caller(entries).compile(())


def _plain_result(numba_type) -> bool:
    if isinstance(numba_type, types.BaseTuple):
        return all(_plain_result(t) for t in numba_type)
    return isinstance(numba_type, _SCALARS) or numba_type == types.none


def _constant_kind(numba_type) -> bool:
    if isinstance(numba_type, types.BaseTuple):
        return all(_constant_kind(t) for t in numba_type)
    return isinstance(numba_type, (types.Array,) + _SCALARS)


def _caller(entries):
    @intrinsic
    def call_all(typingctx):
        def codegen(context, builder, signature, llvm_arguments):
            for address, callee_signature, arguments in entries:
                return_type, argument_types = callee_signature.return_type, callee_signature.args
                function_type = context.call_conv.get_function_type(return_type, argument_types)
                callee = builder.inttoptr(ir.Constant(ir.IntType(64), address), function_type.as_pointer())
                values = [_value(context, builder, t, v) for t, v in zip(argument_types, arguments)]
                status, _ = context.call_conv.call_function(builder, callee, return_type, argument_types, values)
                with cgutils.if_unlikely(builder, status.is_error):
                    context.call_conv.return_status_propagate(builder, status)
            return context.get_dummy_value()

        return types.none(), codegen

    @njit
    def run():
        call_all()

    return run


def _value(context, builder, numba_type, value):
    """The LLVM constant of argument ``value`` of ``numba_type``: an array over its data where it lies."""
    if isinstance(numba_type, types.BaseTuple):
        return context.make_tuple(builder, numba_type,
                                  [_value(context, builder, t, v) for t, v in zip(numba_type, value)])
    if isinstance(numba_type, types.Array):
        intp = context.get_value_type(types.intp)
        fields = {
            "meminfo": None, "parent": None,  # not reference-counted: the bound run owns the array
            "nitems": ir.Constant(intp, value.size),
            "itemsize": ir.Constant(intp, value.itemsize),
            "data": ir.Constant(ir.IntType(64), value.ctypes.data).inttoptr(
                context.get_data_type(numba_type.dtype).as_pointer()),
            "shape": ir.Constant(ir.ArrayType(intp, value.ndim), [ir.Constant(intp, n) for n in value.shape]),
            "strides": ir.Constant(ir.ArrayType(intp, value.ndim), [ir.Constant(intp, n) for n in value.strides]),
        }
        struct = context.get_value_type(numba_type)
        names = context.data_model_manager[numba_type]._fields
        return ir.Constant(struct, [fields[name] if fields[name] is not None else ir.Constant(member, None)
                                    for name, member in zip(names, struct.elements)])
    return context.get_constant(numba_type, np.asarray(value).item() if isinstance(value, np.generic) else value)
