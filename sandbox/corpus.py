"""How a context reaches the REPL: one file in the workspace, never the kernel's messages.

The host writes the context once (``encode``); the kernel reads it and defines three views
(``loader_code``):

- ``str``        -> ``context`` the text, ``docs = [context]``, ``df`` one row per line (``line``)
- ``list[str]``  -> ``docs`` the list, ``context = "\\n\\n".join(docs)``, ``df`` (``doc_id``, ``text``)
- ``DataFrame``  -> ``df`` the frame, ``context = df.to_csv(index=False)``, ``docs`` one text per
  row: the ``text`` column when there is one, else ``"col: value | col: value"``.

Text travels as UTF-8, lists and frames as a pickle (host to sandbox only; the host never
unpickles what a sandbox wrote except through ``safe_pickle``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

Kind = Literal["str", "list", "frame"]
CONTEXT_FILE = "context"


@dataclass(frozen=True)
class EncodedContext:
    kind: Kind
    filename: str
    data: bytes


def encode(context: Any) -> EncodedContext:
    """Serialize a context for the workspace, or say what types are accepted."""
    if isinstance(context, str):
        return EncodedContext("str", CONTEXT_FILE + ".txt", context.encode("utf-8"))
    if isinstance(context, pd.DataFrame):
        return EncodedContext("frame", CONTEXT_FILE + ".pkl", pickle.dumps(context, protocol=5))
    if isinstance(context, (list, tuple)):
        bad = next((i for i, doc in enumerate(context) if not isinstance(doc, str)), None)
        if bad is not None:
            raise TypeError(
                f"load_context: a list context must hold only str; item {bad} is "
                f"{type(context[bad]).__name__} (convert documents to text first)"
            )
        return EncodedContext("list", CONTEXT_FILE + ".pkl", pickle.dumps(list(context), protocol=5))
    raise TypeError(
        f"load_context takes a str, a list[str] or a pandas DataFrame, not {type(context).__name__}"
    )


_LOADER = r'''
def __delm_load_context(kind, path):
    import pickle
    import pandas
    g = globals()
    if kind == "str":
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        g["context"], g["docs"] = text, [text]
        g["df"] = pandas.DataFrame({"line": text.split("\n")})
    elif kind == "list":
        with open(path, "rb") as f:
            docs = pickle.load(f)
        g["docs"], g["context"] = docs, "\n\n".join(docs)
        g["df"] = pandas.DataFrame({"doc_id": range(len(docs)), "text": docs})
    else:
        with open(path, "rb") as f:
            frame = pickle.load(f)
        g["df"], g["context"] = frame, frame.to_csv(index=False)
        if "text" in frame.columns:
            g["docs"] = frame["text"].astype(str).tolist()
        else:
            cols = [str(c) for c in frame.columns]
            g["docs"] = [
                " | ".join(f"{c}: {v}" for c, v in zip(cols, row))
                for row in frame.itertuples(index=False, name=None)
            ]

__delm_load_context(%(kind)r, %(path)r)
del __delm_load_context
'''


def loader_code(kind: Kind, path: str) -> str:
    """Code that defines ``context``, ``docs`` and ``df`` in the REPL from the file at ``path``."""
    return _LOADER % {"kind": kind, "path": path}
