"""edgeloop.edge: the on-device runtime (this folder is installed as ``edgeloop.edge``).

MQTT in (``edgeloop.mqtt``), preprocessing stages, micro-batched LiteRT
inference, the disk outbox and at-least-once delivery, signed model deployment,
and (only when a camera is configured) the OpenCV vision pipeline.
"""
