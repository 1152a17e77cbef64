"""OpenCV, the one dependency only the camera path has (the ``vision`` extra).

Why a module of its own: a sensor-only edge never imports OpenCV (about
150 MB installed, tens of MB resident), so the modules that need it load it
through here, and only once a camera pipeline is configured. An install
without the extra (``[edge]``, ``[tflite]`` on a 32-bit Pi) then gets one
message naming the extra instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

from types import ModuleType

from edgeloop.errors import ConfigError

MISSING = "camera pipelines need OpenCV, which the 'vision' extra installs: install edgeloop[edge,vision] (README, Install)"


def load_cv2() -> ModuleType:
    """``cv2``, or ModuleNotFoundError naming the extra."""
    try:
        import cv2
    except ImportError as exc:
        raise ModuleNotFoundError(f"{MISSING} ({exc})", name="cv2") from exc
    return cv2


def require_opencv(source: str) -> None:
    """ConfigError (exit 2) on the ``vision`` field of ``source`` when OpenCV cannot be imported."""
    try:
        load_cv2()
    except ImportError:
        raise ConfigError(source, [f"vision: {MISSING}"]) from None
