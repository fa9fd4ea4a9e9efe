"""rosbag2 replay, recording and reports (MCAP and sqlite3, through ``rosbags``; no rosbag2 needed).

* ``messages``: the Kilted typestore plus vla_accel's own ActionChunk / InferenceStats from msg/
* ``reader``: camera frames, instructions and joint states out of a bag, topics found by type
* ``observations``: bag events -> observations through the live node's ObservationAssembler; rate modes
* ``replay``: the bag through one or more backends (offline, deterministic, or as live)
* ``writer``: output bags (ActionChunk + InferenceStats per backend) and reading chunks back
* ``compare``: deviation between backends and regression against a golden bag (per-precision tolerances)
* ``report``: Markdown / HTML / JSON report and PNG plots
* ``sample``: the deterministic synthetic sample bag (mixed encodings, odd sizes, broken messages)
* ``player`` / ``live``: publish a bag onto a live ROS graph, record the node's outputs, compare

Nothing here imports rclpy at import time; ``player`` and ``live`` import it when used.
"""
