"""Camera frames on the edge: JPEG checks, image stages, newest-wins slots, the frame worker.

Why a package of its own: frames differ from sensor readings in every way
that matters to the runtime -- they are large, arrive as binary, are useful
only while fresh, and cost milliseconds each to decode -- so they get their
own path (latest-slot back-pressure, a worker thread, batched classification)
that joins the sensor path only at the wire contract (InferenceResult).
"""
