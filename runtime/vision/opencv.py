"""OpenCV, the one dependency only the camera path has (the ``vision`` extra).

Why a module of its own: a sensor-only edge never imports OpenCV (about
150 MB installed, tens of MB resident), so the modules that need it load it
through here, and only once a camera pipeline is configured. An install
without the extra (``[edge]``, ``[tflite]`` on a 32-bit Pi) then gets one
message naming the extra instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

from types import ModuleType

from edgeloop.extras import require

MISSING = "camera pipelines need OpenCV, which the 'vision' extra installs: pip install 'edgeloop[edge,vision]'"


def load_cv2() -> ModuleType:
    """``cv2``, or ModuleNotFoundError naming the extra."""
    try:
        import cv2
    except ImportError as exc:
        raise ModuleNotFoundError(f"{MISSING} ({exc})", name="cv2") from exc
    return cv2


def require_opencv(source: str) -> None:
    """MissingExtra (a config error, exit 2) naming ``source``, its ``vision:`` field and the extra, before
    anything connects, when OpenCV is not installed. Looks OpenCV up without importing it."""
    require(f"a camera pipeline (vision: in {source})", "vision", install="edge,vision")
