"""Errors a user can cause, and reading the files a user can hand us without a traceback.

A :class:`UserError` is a mistake the user can fix (a bad option, a file that is not what it should be, a
run and a dataset that do not belong together). The CLI prints its message (what, where, how to fix) and
exits with code 2; every other exception is an internal bug and keeps its traceback. ``--debug`` (or
``LIFELONG_DEBUG=1``) shows the traceback of a user error too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """A mistake in the user's input, options or files; the message says what, where and how to fix it.

    A subclass of ``ValueError`` so code that catches ``ValueError`` around validation keeps working.
    """


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse the JSON file ``path``; a missing, unreadable or malformed file is a :class:`UserError`
    naming it (``what`` says what the file is, e.g. "the run's config")."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist ({what})") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, expected a JSON file ({what})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file ({what}, expected JSON)") from None
    except OSError as error:
        raise UserError(f"cannot read {path} ({what}): {error.strerror or error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = "it is empty" if not text.strip() else f"line {error.lineno}, column {error.colno}: {error.msg}"
        raise UserError(f"{path} is not valid JSON ({what}): {where}") from None
