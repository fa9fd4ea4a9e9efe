"""Importers: a policy trained in another framework -> a vla_accel model folder (graphs + spec).

``lerobot``: a LeRobot ``pretrained_model/`` checkpoint (``vla-accel import lerobot``). Importers run
the source framework (an optional dependency, imported only here) to rebuild the policy, export its
graphs, write the spec with the policy's own normalisation statistics, and check parity between the
source framework and vla_accel's preprocessing + runtime before anything is written as usable.
"""
