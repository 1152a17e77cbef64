"""Ingest: from whatever a device already publishes to the rows a pipeline windows.

A pipeline's input is a topic template (``zigbee2mqtt/{device}``) and a codec
(``edgeloop``, ``json``, ``senml``, ``influx``, ``sparkplug``); presets name
both for the common ecosystems. The interface every codec implements is in
``edgeloop.edge.ingest.codec``.
"""
