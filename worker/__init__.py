"""Celery classify workers (issue 3). Needs the `worker` extra only, never TensorFlow."""
