"""The ``edgeloop`` codec: edgeloop's own reading contract (``edgeloop.contract.SensorReading``).

The default and the fast path: one pydantic-core validation of the JSON straight
into the contract model, then one numpy conversion -- the same work the engine did
before there were codecs (``make bench`` compares the two in one run).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import numpy as np

from edgeloop.contract import ContractError, decode_reading
from edgeloop.errors import PayloadError
from edgeloop.edge.ingest.codec import Decoded, InputBase, Reading

#: Payload size is refused at the door (``input.max_payload_bytes``) before a codec runs.
_NO_LIMIT = 1 << 62


class EdgeloopCodec:
    name: ClassVar[str] = "edgeloop"

    def decode(self, topic: str, fields: Mapping[str, str], payload: bytes, arrival: float) -> Decoded:
        try:
            reading = decode_reading(payload, _NO_LIMIT)
        except ContractError as exc:
            raise PayloadError(exc.reason, str(exc)) from None
        samples = np.asarray(reading.values, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples.reshape(1, -1)
        return Decoded([Reading(fields.get("device", ""), samples, reading.ts, reading.seq, reading.rate_hz)])


class EdgeloopInput(InputBase):
    """edgeloop's own readings (docs/INTERFACES.md); topic default sensors/{device}/<the pipeline's sensor>."""

    codec: Literal["edgeloop"] = "edgeloop"

    def build(self) -> EdgeloopCodec:
        return EdgeloopCodec()
