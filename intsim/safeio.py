"""Bounded reading of untrusted containers: zip members, ``.npy`` arrays and JSON.

Every size is checked against the bytes that are actually there before anything
is allocated, and every failure of the layers below (``zlib``, ``lzma``,
``zipfile``, numpy's header parser, ``json``) becomes a
:class:`~intsim.errors.ModelFormatError` naming the file and the member.

* A zip member is read only if its compression is stored or deflate, it is not
  encrypted, its name is unique, and its declared size is under the caller's
  limit; it is streamed with the limit enforced on the bytes produced, so a
  directory entry that lies about the size cannot make the reader allocate more.
* An ``.npy`` member's header is parsed here (a literal dict of at most
  :data:`MAX_NPY_HEADER` bytes, simple integer or float dtypes only, no
  pickles); the array's byte count must equal what the member holds after the
  header, must stay under :data:`MAX_ARRAY_BYTES`, and a member larger than
  :data:`RATIO_FLOOR` bytes may not be compressed more than :data:`MAX_RATIO`
  to 1.  The data is then read straight into the array (one copy, not two).
* JSON is capped in size, nesting depth (:data:`MAX_JSON_DEPTH`, checked
  before parsing, so no parser recursion), integer length and duplicate keys.
"""

from __future__ import annotations

import ast
import json
import lzma
import math
import os
import tomllib
import re
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np

from intsim.errors import ModelFormatError, ValidationError

MAX_ARRAY_BYTES = 2**30  # one parameter array: 1 GiB
MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64
MAX_JSON_INT_DIGITS = 40
MAX_NPY_HEADER = 2**16
MAX_RATIO = 200  # deflate of real weights is near 1:1; 200:1 is only reached by runs of one byte
RATIO_FLOOR = 2**20  # small members (zero points, biases of zeros) may compress further
ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_CHUNK = 2**20
_DECODE_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zlib.error,
                  lzma.LZMAError)


def _fail(where, message):
    raise ModelFormatError(f"{where}: {message}")


def open_zip(path, where) -> tuple[zipfile.ZipFile, dict]:
    """Open ``path`` as a zip; ``(zip file, {member name: ZipInfo})`` after checking that every
    name is unique and every member is stored or deflated and not encrypted."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        _fail(where, "no such file")
    except IsADirectoryError:
        _fail(where, "is a directory, not a file")
    except _DECODE_ERRORS as exc:
        _fail(where, f"not a readable zip archive ({type(exc).__name__}: {exc})")
    members = {}
    for info in zf.infolist():
        if info.filename in members:
            zf.close()
            _fail(where, f"member {info.filename!r} appears twice (which one is meant is ambiguous)")
        if info.flag_bits & 0x1:
            zf.close()
            _fail(where, f"member {info.filename!r} is encrypted; intsim reads only plain members")
        if info.compress_type not in ALLOWED_COMPRESSION:
            zf.close()
            _fail(where, f"member {info.filename!r} uses compression method {info.compress_type}; expected "
                         f"{' or '.join(ALLOWED_COMPRESSION.values())}")
        members[info.filename] = info
    return zf, members


def _check_ratio(info, where):
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        _fail(where, f"member {info.filename!r} expands {info.compress_size} bytes to {info.file_size} "
                     f"(over {MAX_RATIO}:1, a zip bomb?)")


def read_member(zf, info, limit, where) -> bytes:
    """The bytes of member ``info``, at most ``limit`` of them, the limit enforced while decompressing."""
    if info.file_size > limit:
        _fail(where, f"member {info.filename!r} declares {info.file_size} bytes, over the limit of {limit}")
    _check_ratio(info, where)
    try:
        with zf.open(info) as stream:
            data = stream.read(limit + 1)
    except _DECODE_ERRORS as exc:
        _fail(where, f"member {info.filename!r} is corrupt ({type(exc).__name__}: {exc})")
    if len(data) > limit:
        _fail(where, f"member {info.filename!r} expands past the limit of {limit} bytes")
    return data


def _npy_header(stream, member, where) -> tuple[np.dtype, tuple, bool]:
    magic = stream.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        _fail(where, f"{member!r} is not a valid .npy array (bad magic or version)")
    size_bytes = 2 if magic[6] == 1 else 4
    header_len = int.from_bytes(stream.read(size_bytes), "little")
    if header_len > MAX_NPY_HEADER:
        _fail(where, f"{member!r} is not a valid .npy array: header of {header_len} bytes, over the limit of "
                     f"{MAX_NPY_HEADER}")
    raw = stream.read(header_len)
    if len(raw) != header_len:
        _fail(where, f"{member!r} is not a valid .npy array: .npy header truncated")
    try:
        header = ast.literal_eval(raw.decode("latin1" if magic[6] < 3 else "utf8"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError, TypeError) as exc:
        _fail(where, f"{member!r} is not a valid .npy array: malformed .npy header ({type(exc).__name__})")
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        _fail(where, f"{member!r} is not a valid .npy array: header must hold exactly "
                     "descr, fortran_order and shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not re.fullmatch(r"[<>|=]?[iuf][1248]", descr):
        _fail(where, f"{member!r} is not a valid .npy array: must hold an integer or float array, "
                     f"found dtype {descr!r}")
    if not isinstance(fortran, bool):
        _fail(where, f"{member!r} is not a valid .npy array: fortran_order must be a boolean, found {fortran!r}")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        _fail(where, f"{member!r} is not a valid .npy array: shape must be a tuple of non-negative integers, "
                     f"found {shape!r}")
    return np.dtype(descr), shape, fortran


def read_npy_member(zf, info, where) -> np.ndarray:
    """The array stored as ``.npy`` in member ``info``, its size checked against the member's before any
    allocation, read in place (see the module docstring)."""
    _check_ratio(info, where)
    try:
        with zf.open(info) as stream:
            return _read_npy(stream, info.file_size, info.filename, where)
    except ModelFormatError:
        raise
    except _DECODE_ERRORS as exc:
        _fail(where, f"member {info.filename!r} is corrupt ({type(exc).__name__}: {exc})")


@contextmanager
def _open_file(path, where, what, limit):
    """``(stream, size)`` of the file at ``path``: it must exist, be a file and hold at most ``limit`` bytes."""
    try:
        stream = open(path, "rb")
    except FileNotFoundError:
        _fail(where, f"{what} does not exist")
    except IsADirectoryError:
        _fail(where, f"{what} is a directory, not a file")
    except OSError as exc:
        _fail(where, f"{what} cannot be read ({exc})")
    with stream:
        size = os.fstat(stream.fileno()).st_size
        if size > limit:
            _fail(where, f"{what} is {size} bytes, over the limit of {limit}")
        yield stream, size


def read_npy_file(path, where) -> np.ndarray:
    """The array of the ``.npy`` file at ``path``, checked as :func:`read_npy_member` checks a member."""
    name = os.path.basename(path)
    with _open_file(path, where, name, MAX_ARRAY_BYTES + MAX_NPY_HEADER + 16) as (stream, size):
        return _read_npy(stream, size, name, where)


def _read_npy(stream, size, name, where) -> np.ndarray:
    dtype, shape, fortran = _npy_header(stream, name, where)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        _fail(where, f"{name!r} is not a valid .npy array: shape {shape} of {dtype} is {nbytes} bytes, "
                     f"over the limit of {MAX_ARRAY_BYTES}")
    if stream.tell() + nbytes != size:
        _fail(where, f"{name!r} is not a valid .npy array: the header declares {nbytes} bytes of data, "
                     f"the file holds {size - stream.tell()}")
    array = np.empty(count, dtype)
    view = memoryview(array.view(np.uint8))
    done = 0
    while done < nbytes:
        got = stream.readinto(view[done:done + _CHUNK])
        if not got:
            _fail(where, f"{name!r} is not a valid .npy array: data truncated after {done} of {nbytes} bytes")
        done += got
    if stream.read(1):  # also what makes a zip member's CRC-32 be checked: it is checked at the member's end
        _fail(where, f"{name!r} is not a valid .npy array: data continues past the {nbytes} bytes its header declares")
    array = array.reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("="), copy=False))


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, strings ignored (no recursion)."""
    bare = np.frombuffer(_JSON_STRING.sub(b'""', data), np.uint8)
    steps = np.isin(bare, (ord("["), ord("{"))).astype(np.int64) - np.isin(bare, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max()) if steps.size else 0


def _parse_int(text):
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (the limit is {MAX_JSON_INT_DIGITS})")
    return int(text)


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def load_json(data: bytes, where, what="manifest.json"):
    """Parse JSON text of at most :data:`MAX_JSON_BYTES`, nested at most :data:`MAX_JSON_DEPTH` deep,
    integers of at most :data:`MAX_JSON_INT_DIGITS` digits, no duplicate keys."""
    if len(data) > MAX_JSON_BYTES:
        _fail(where, f"{what} is {len(data)} bytes, over the limit of {MAX_JSON_BYTES}")
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        _fail(where, f"{what} nests {depth} levels deep, over the limit of {MAX_JSON_DEPTH}")
    try:
        return json.loads(data.decode("utf-8"), parse_int=_parse_int, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        _fail(where, f"{what} is not valid JSON ({exc})")


def read_json_file(path, where, what):
    """:func:`load_json` of the file at ``path``, its size checked before it is read."""
    with _open_file(path, where, what, MAX_JSON_BYTES) as (stream, _):
        return load_json(stream.read(), where, what)


MAX_TOML_BYTES = 2**20  # a profile or a layer configuration is a few dozen lines


def read_toml(path, where: str) -> dict:
    """The tables of the TOML file ``path`` (at most :data:`MAX_TOML_BYTES`); every failure a
    :class:`~intsim.errors.ValidationError` that starts with ``where`` (e.g. ``"profile file p.toml"``)."""
    try:
        size = os.stat(path).st_size
        if size > MAX_TOML_BYTES:
            raise ValidationError(f"{where} is {size} bytes, over the limit of {MAX_TOML_BYTES}")
        with open(path, encoding="utf-8") as f:
            return tomllib.loads(f.read())
    except FileNotFoundError:
        raise ValidationError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ValidationError(f"{where} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ValidationError(f"{where} cannot be read ({exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValidationError(f"{where}: not valid TOML ({type(exc).__name__}: {exc})") from None
