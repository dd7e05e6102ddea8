"""Hypothesis profiles for the whole suite (docs/reliability.md, "Fuzzing").

``ci`` (the default) keeps the fuzz suite near a minute on a 2-core machine; ``long``
(``HYPOTHESIS_PROFILE=long``) runs every property many more times: over 100k examples in
the fuzz suite in all. Tests whose examples are expensive take a share of the profile's
count through ``fuzz_testkit.examples``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True)
settings.register_profile(
    "long",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
