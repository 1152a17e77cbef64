"""Model training on the cloud side (needs the ``train`` extra: TensorFlow).

``autoencoder``: the vibration model family (features, fit, TFLite conversion,
metadata); ``retrain``: the closed loop's retrain on field samples, run in a
worker process; ``selftest``: the rows a deployed model must reproduce.
Importing them does not import TensorFlow until a model is trained.
"""
