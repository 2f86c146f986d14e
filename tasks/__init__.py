"""Experiment pipeline around the `lsg` library: configs, data, task kinds, training, reports.

See docs/pipeline.md. Imports point one way: run.py -> tasks -> lsg.
"""
