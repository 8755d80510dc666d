"""Unpickling of values that come *out* of a sandbox.

A pickle is a program: loading one written by sandboxed code with plain ``pickle.loads``
would run that code on the host. This unpickler resolves only plain data types (builtins,
collections, datetime, decimal, numpy, pandas, pyarrow data structures) and refuses any
other global, so a hostile pickle fails with ``pickle.UnpicklingError`` instead.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

_BUILTINS = {
    "list", "dict", "set", "frozenset", "tuple", "str", "bytes", "bytearray", "int", "float",
    "complex", "bool", "slice", "range", "object", "NoneType", "Ellipsis",
}
_EXACT = {
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("collections", "Counter"),
    ("collections", "deque"),
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"),
    ("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"),
    ("zoneinfo", "ZoneInfo"), ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("pyarrow.lib", "py_buffer"), ("pyarrow.lib", "type_for_alias"),
}
# Data-structure packages: their classes and their named reconstructor helpers only.
_DATA_PACKAGES = ("numpy", "pandas", "pyarrow")
_HELPER_PREFIXES = ("_unpickle", "__pyx_unpickle", "_reconstruct", "_new_", "_restore_")


def _allowed(module: str, name: str, obj: Any) -> bool:
    if module == "builtins":
        return name in _BUILTINS
    if (module, name) in _EXACT:
        return True
    root = module.split(".")[0]
    if root not in _DATA_PACKAGES or module.startswith("pandas.io"):
        return False
    return isinstance(obj, type) or name.startswith(_HELPER_PREFIXES)


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        root = module.split(".")[0]
        if module != "builtins" and (module, name) not in _EXACT and root not in _DATA_PACKAGES:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} from a sandbox value")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise pickle.UnpicklingError(f"cannot resolve {module}.{name}: {err}") from None
        if not _allowed(module, name, obj):
            raise pickle.UnpicklingError(f"refused to load {module}.{name} from a sandbox value")
        return obj


def loads(data: bytes) -> Any:
    """Load a pickle made by untrusted code, allowing plain data types only."""
    return _DataUnpickler(io.BytesIO(data)).load()
