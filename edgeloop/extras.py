"""The optional dependencies ('extras' in pyproject.toml) by the modules they provide.

Why: a command whose extra is not installed must say which extra to install,
in one line, before it imports anything -- not die with a traceback. The check
looks the modules up (``importlib.util.find_spec``) without importing them.
``tests/unit/test_cli_dispatch.py`` checks that each extra named here really
provides its modules (the distribution's metadata).
"""

from __future__ import annotations

import importlib.util

from edgeloop.errors import MissingExtra

#: extra -> the import names it provides; a tuple is "any one of these" (alternatives).
EXTRAS: dict[str, tuple[str | tuple[str, ...], ...]] = {
    # Any TFLite interpreter will do (edgeloop.edge.inference tries them in this order).
    "edge": (("ai_edge_litert", "tflite_runtime", "tensorflow"), "cryptography"),
    "vision": ("cv2",),
    "sparkplug": ("google.protobuf",),
    "bridge": ("influxdb_client", "cryptography", "pyarrow", "scipy", "river"),
    "train": ("tensorflow",),
}

#: What to add to the install line, for installs where the extra itself does not fit.
HINTS = {"edge": "32-bit Pi OS: 'edgeloop[tflite]'"}


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a finder refusing the name
        return False


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be found (alternatives shown as ``a or b``)."""
    out = []
    for need in EXTRAS[extra]:
        options = need if isinstance(need, tuple) else (need,)
        if not any(_present(m) for m in options):
            # The last alternative of the edge interpreter (TensorFlow) is not one to recommend.
            shown = options[:2] if len(options) > 2 else options
            out.append(" or ".join(shown))
    return out


def require(what: str, *extras: str, install: str | None = None) -> None:
    """Raise MissingExtra (exit 2) naming the first of ``extras`` with a module missing.

    ``install`` is the install line's extras when the missing one needs company
    (a camera edge: ``edge,vision``).
    """
    for extra in extras:
        absent = missing(extra)
        if absent:
            raise MissingExtra(what, extra, absent, HINTS.get(extra), install)
