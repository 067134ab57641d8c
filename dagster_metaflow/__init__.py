"""Compile Metaflow flows into Dagster jobs and run them with Metaflow's semantics."""

__version__ = "0.1.0"
