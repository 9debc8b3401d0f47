"""The deterministic network simulator: production node runtimes on virtual time, seeded faults.

`python -m node.sim --seeds 1-200` runs many seeds; see docs/architecture.md, "Simulator".
"""
