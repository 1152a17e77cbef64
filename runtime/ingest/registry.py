"""The one list of codecs a pipeline's ``input:`` can name.

``PipelineInput`` is a pydantic union discriminated by ``codec``: each member is a
codec's settings model (a subclass of ``edgeloop.edge.ingest.codec.InputBase``).
A new codec adds its settings class here, one line, and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from edgeloop.edge.ingest.edgeloop_codec import EdgeloopInput
from edgeloop.edge.ingest.influx_line import InfluxLineInput
from edgeloop.edge.ingest.json_codec import JsonInput
from edgeloop.edge.ingest.senml import SenmlInput
from edgeloop.edge.ingest.sparkplug import SparkplugInput

PipelineInput = Annotated[
    Union[
        EdgeloopInput,
        JsonInput,
        SenmlInput,
        InfluxLineInput,
        SparkplugInput,
    ],
    Field(discriminator="codec"),
]
