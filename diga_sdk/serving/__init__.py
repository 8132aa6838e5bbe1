"""Serving: runtimes behind one interface (runtime.py) and the BentoML service. Nothing heavy is
imported here; `from diga_sdk.runtime.runtimes import open_runtime` loads only what a runtime needs."""

from __future__ import annotations
