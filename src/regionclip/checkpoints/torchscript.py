"""TorchScript archives (``torch.jit.save`` zips such as OpenAI's ``RN50.pt``) read as data, never run as code.

What such an archive holds (all under one folder, ``<prefix>/``):

* ``data.pkl``: the module tree, pickled. Every module is an object of a TorchScript class named by a global such as
  ``__torch__.torch.nn.modules.conv.Conv2d`` whose pickled state is the dict of its attributes (tensors,
  submodules, numbers ...). Tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
  calls whose storage is a persistent id ``("storage", <dtype>Storage, key, location, numel)``;
* ``data/<key>``: the raw bytes of each storage (``numel`` elements, byte order given by the ``byteorder`` record;
  archives written before that record existed come from little-endian machines);
* ``code/``: the TorchScript source of every class. Each module class declares its parameters and buffers there
  (``__parameters__ = ["weight", "bias", ]``, ``__buffers__ = [...]``); ``constants.pkl`` holds the code's constants.

``torch.jit.load`` compiles that code and runs it while unpickling: a class's ``__setstate__`` receives the pickled
state, and it can do anything TorchScript can (write files through ``torch.from_file``, for one). Here ``data.pkl``
goes through an unpickler that constructs nothing but tensors (from the storages, bounds-checked), plain containers
and ``OrderedDict``; every other global becomes an inert `ScriptObject` that only records the arguments and state it
is given. The ``code/`` files are read as text for the ``__parameters__`` / ``__buffers__`` lists, which give
exactly the entries ``torch.jit.load(path).state_dict()`` returns: each module's parameters, then its buffers, then
its submodules' entries, in attribute order.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_CLASS_HEADER = re.compile(r"^class (\w+)\((\w+)\):[ \t]*$", re.MULTILINE)
_MEMBER_LIST = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])[ \t]*$", re.MULTILINE)


def is_torchscript_archive(path: str | Path) -> bool:
    """A zip holding ``constants.pkl`` or ``code/`` (what ``torch.jit.save`` writes; ``torch.save`` writes neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


class _Refuses:
    """Values this unpickler makes for the pickle; the pickle may not set their state (BUILD)."""

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError(f"the pickle tries to set the state of a {type(self).__name__}")


@dataclass(frozen=True)
class _StorageType(_Refuses):
    """Stands for a ``torch.<Type>Storage`` global, which the pickle only names inside storage ids."""

    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage(_Refuses):
    data: torch.Tensor  # 1-D, the storage's elements


@dataclass(frozen=True)
class _Tensor(_Refuses):
    value: torch.Tensor


class ScriptObject:
    """Inert stand-in for an object of a class the pickle names (a TorchScript class, or any other global): it keeps
    the arguments it was called with and the state it was given, and runs nothing."""

    qualified_name = ""

    def __new__(cls, *args: object) -> ScriptObject:
        record = super().__new__(cls)
        record.args, record.state = args, None
        return record

    def __setstate__(self, state: object) -> None:
        self.state = state


@dataclass(frozen=True)
class _ClassDeclaration:
    is_module: bool
    parameters: tuple[str, ...]
    buffers: tuple[str, ...]


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, read_storage: Callable[[str, torch.dtype, int], torch.Tensor]) -> None:
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage
        self._storages: dict[str, _Storage] = {}  # by key: tensors that share a storage in the file share it here
        self._record_types: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> object:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict  # the (empty) backward-hooks argument of _rebuild_tensor_v2
        qualified = f"{module}.{name}"
        if qualified not in self._record_types:
            self._record_types[qualified] = type(name, (ScriptObject,), {"qualified_name": qualified})
        return self._record_types[qualified]

    def persistent_load(self, saved_id: object) -> _Storage:
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {saved_id!r:.80}")
        _, storage_type, key, _location, numel = saved_id
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage id {saved_id!r:.80}")
        if key not in self._storages:
            self._storages[key] = _Storage(self._read_storage(key, storage_type.dtype, numel))
        storage = self._storages[key]
        if storage.data.dtype != storage_type.dtype or storage.data.numel() != numel:
            raise pickle.UnpicklingError(f"storage {key} is used with two different types or sizes")
        return storage


def _rebuild_tensor(
    storage: object, storage_offset: object, size: object, stride: object, *_requires_grad_hooks_metadata: object
) -> _Tensor:
    """The tensor ``torch._utils._rebuild_tensor_v2`` makes, as a view of the storage (bounds checked by
    ``as_strided``); autograd flags, hooks and metadata do not matter for weights."""
    if not (
        isinstance(storage, _Storage)
        and type(storage_offset) is int
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and all(type(v) is int for v in (*size, *stride))
    ):
        raise pickle.UnpicklingError("malformed tensor record")
    return _Tensor(storage.data.as_strided(size, stride, storage_offset))


def _decode_storage(raw: bytes, dtype: torch.dtype, numel: int, byteorder: str) -> torch.Tensor:
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    element_size = torch.empty(0, dtype=dtype).element_size()
    word = element_size // 2 if dtype.is_complex else element_size  # complex numbers swap each half
    if byteorder != sys.byteorder and word > 1:
        data = data.view(-1, word).flip(1).reshape(-1)
    return data.view(dtype)


def _declarations(archive: zipfile.ZipFile, prefix: str) -> dict[str, _ClassDeclaration]:
    """Every class of ``code/`` by qualified name (``code/__torch__/a/b.py`` class ``C`` → ``__torch__.a.b.C``)."""
    found = {}
    code_dir = prefix + "code/"
    for name in archive.namelist():
        if not (name.startswith(code_dir) and name.endswith(".py")):
            continue
        module = name[len(code_dir) : -len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8", errors="replace")
        headers = list(_CLASS_HEADER.finditer(text))
        for header, following in zip(headers, [*headers[1:], None]):
            body = text[header.end() : following.start() if following else len(text)]
            members = {kind: ast.literal_eval(literal) for kind, literal in _MEMBER_LIST.findall(body)}
            lists = [tuple(members.get(kind, ())) for kind in ("__parameters__", "__buffers__")]
            if not all(isinstance(n, str) for names in lists for n in names):
                raise ValueError(f"{name}: malformed parameter list of class {header.group(1)}")
            found[f"{module}.{header.group(1)}"] = _ClassDeclaration(header.group(2) == "Module", *lists)
    return found


def _flatten(
    module: ScriptObject,
    declarations: dict[str, _ClassDeclaration],
    prefix: str,
    out: dict[str, torch.Tensor],
    enclosing: frozenset[int] = frozenset(),
) -> None:
    if id(module) in enclosing:  # a pickle can make cycles; a module tree cannot
        raise ValueError(f"module {prefix.rstrip('.')} contains itself")
    declaration = declarations.get(module.qualified_name)
    if declaration is None:
        raise ValueError(f"the archive's code does not declare class {module.qualified_name}")
    if not isinstance(module.state, dict):
        raise ValueError(
            f"module {prefix.rstrip('.') or '<root>'} ({module.qualified_name}) stores custom state (its class defines "
            "__getstate__/__setstate__) instead of named attributes, so its tensors cannot be read as weights"
        )
    for members in (declaration.parameters, declaration.buffers):
        for name, value in module.state.items():
            if name in members and isinstance(value, _Tensor):
                out[prefix + name] = value.value
    for name, value in module.state.items():
        child = declarations.get(value.qualified_name) if isinstance(value, ScriptObject) else None
        if child is not None and child.is_module:
            _flatten(value, declarations, f"{prefix}{name}.", out, enclosing | {id(module)})


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors ``torch.jit.load(path).state_dict()`` would give (same names, order, dtypes, shapes, strides and
    storage sharing), read from the archive's pickle and storage records without running any of its code."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.rpartition("/")[2] == "data.pkl" and n.count("/") <= 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a TorchScript archive has one data.pkl, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise ValueError(f"{path}: unknown byte order {byteorder!r}")

        def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            record = f"{prefix}data/{key}"
            if record not in names:
                raise ValueError(f"{path}: storage record {record} is missing")
            nbytes = numel * torch.empty(0, dtype=dtype).element_size()
            raw = archive.read(record)
            if len(raw) < nbytes:
                raise ValueError(f"{path}: storage record {record} has {len(raw)} bytes, {nbytes} expected")
            return _decode_storage(raw[:nbytes], dtype, numel, byteorder)

        try:
            root = _DataOnlyUnpickler(archive.read(pickles[0]), read_storage).load()
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as error:
            raise ValueError(f"{path}: malformed TorchScript archive ({type(error).__name__}: {error})") from None
        declarations = _declarations(archive, prefix)
    if not isinstance(root, ScriptObject) or not getattr(declarations.get(root.qualified_name), "is_module", False):
        raise ValueError(f"{path}: the archive's data.pkl does not hold a TorchScript module")
    state: dict[str, torch.Tensor] = {}
    try:
        _flatten(root, declarations, "", state)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return state
