"""wire's trial suite.

Hypothesis: examples are judged by what they prove, never by how fast they
run (speed is the benches' job, bench/): no per-example deadline and no
"too slow" health check, which a loaded CI machine would trip at random.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("wire", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("wire")
