"""Loaded by tests through PYTHONPATH: records every write a launched worker makes under AUDIT_PATH.

Each worker (a process with RANK set) appends what it wrote to $AUDIT_DIR/rank-$RANK.txt at exit.
"""

import atexit
import os
import sys

_rank = os.environ.get("RANK")
_prefix = os.environ.get("AUDIT_PATH")
_out = os.environ.get("AUDIT_DIR")

if _rank is not None and _prefix and _out:
    _writes = []
    _busy = []
    _WRITE_EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"}

    def _hook(event, args):
        if _busy:
            return
        path = None
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                path = args[0]
        elif event in _WRITE_EVENTS and args:
            path = args[0]
        if path is not None:
            path = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else path
            if os.path.abspath(path).startswith(_prefix):
                _writes.append(f"{event} {path}")

    def _dump():
        _busy.append(True)
        with open(os.path.join(_out, f"rank-{_rank}.txt"), "w") as f:
            f.write("\n".join(_writes))

    sys.addaudithook(_hook)
    atexit.register(_dump)
