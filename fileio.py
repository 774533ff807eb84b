"""Files a run or a server writes and the one error a user can fix: shared by training and by what uses a model.

Writes go through a temporary file and a rename, so a crash never leaves a
half-written cache, results file or checkpoint file in place of a good one.
"""
import hashlib
import json
import os
import tempfile


class UserError(Exception):
    """A bad input the user can fix; main() prints it as one line and exits non-zero."""


def atomic_write(path, write):
    """Write via a temporary file and rename, so readers never see a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
