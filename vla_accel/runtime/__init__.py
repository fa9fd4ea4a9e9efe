"""The ROS-free runtime every entry point runs on: the node, ``vla-accel replay``, the live player,
the demo and the node benchmark.

* ``config``: ``RuntimeConfig``, the typed configuration (from the node's parameters, CLI options or YAML)
* ``inputs``: camera frames, instruction and joint state -> ``Observation`` (``ObservationAssembler``)
* ``session``: model, backend chain, CPU baseline, engine and inference loop (``InferenceSession``)
* ``status``: per-input counters and the health / status reports built from a metrics snapshot
* ``conversions``: message fields (rclpy or rosbags messages alike) -> core types, stamps, stop actions
* ``wiring``: cameras -> assembler -> session, once, for every entry point

Importing this package imports no rclpy and no inference runtime.
"""
