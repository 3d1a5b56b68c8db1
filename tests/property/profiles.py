"""Hypothesis settings of the oracle tests, chosen by ``LAYERFS_HYPOTHESIS_PROFILE``.

``default`` (local runs) is quick, ``ci`` runs a few hundred sequences within the CI budget,
``deep`` is for hunting. Every profile is derandomized and keeps no example database, so a
failure on CI is reproduced by running the same command locally.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("LAYERFS_HYPOTHESIS_PROFILE", "default")
if PROFILE not in ("default", "ci", "deep"):
    raise ValueError(f"LAYERFS_HYPOTHESIS_PROFILE={PROFILE!r}: use default, ci or deep")


def oracle_settings(default: int, ci: int, deep: int, **extra: int) -> settings:
    """Settings with ``max_examples`` picked from the three counts by the active profile."""
    count = {"default": default, "ci": ci, "deep": deep}[PROFILE]
    return settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
        **extra,  # type: ignore[arg-type]
    )
