"""Model training on the cloud side (needs the ``train`` extra: TensorFlow).

``edgeloop.bridge.training.build`` makes the bundled vibration model; importing it
does not import TensorFlow until ``build_model`` runs.
"""
