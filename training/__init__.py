"""Model training, evaluation and export: the only package that imports TensorFlow.

Library modules (`data`, `model`, `train`, `evaluate`, `export`) plus a thin CLI
(`training.cli`) registered on the `deepscreen` script.
"""
