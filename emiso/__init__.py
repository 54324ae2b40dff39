"""EMISO engine: a Docker Engine API server for SO3 containers on a smart object."""

__version__ = "0.1.0"
