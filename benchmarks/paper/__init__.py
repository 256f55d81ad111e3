"""The Orla paper's experiments (SWE-bench stage mapping, DAG-MATH caching) on the simulator,
and the simulator's fidelity against the real engine. ``docs/experiments.md`` describes
them; the commands are ``benchmarks.paper_mapping``, ``benchmarks.paper_cache`` and
``benchmarks.sim_fidelity``."""
