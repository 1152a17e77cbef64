"""edgeloop: an edge-ML runtime for MQTT IoT fleets -- sense, infer on device, store, retrain, redeploy.

One import package, assembled from the repository's folders (pyproject.toml,
``[tool.setuptools.package-dir]``)::

    edgeloop            edgeloop/       the core: wire and deploy contracts, model files, the MQTT link,
                                        config loading, secrets, signing, errors, logging, the CLI dispatcher
    edgeloop.edge       runtime/        what the Pi runs: stages, inference, delivery, deployment, vision
    edgeloop.bridge     cloud_bridge/   results -> InfluxDB, the closed loop, registry, deployer, training
    edgeloop.devices    devices/        device-side publishers: simulators, camera capture, board profiles

Dependencies point down only: the core imports no component; the edge imports
the core; the bridge and the devices import the core (the bridge's trainer also
the edge's pure preprocessing and inference code). ``tests/unit/test_layering.py``
checks every direction. Importing this package is cheap: no numpy, no interpreter.
"""

__version__ = "0.1.0"
