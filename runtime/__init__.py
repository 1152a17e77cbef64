"""edgeloop edge runtime.

Importing this package is cheap on purpose: ``runtime.contract`` and
``runtime.common`` depend only on pydantic/paho/yaml, so the cloud bridge and
device publishers can import them without numpy or an interpreter.
"""

__version__ = "0.1.0"
