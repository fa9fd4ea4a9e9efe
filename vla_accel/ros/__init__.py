"""The ROS 2 layer: the VLA node (vla_node) and what only ROS needs.

params (declared parameters, shared with launch and config files, mapped onto the runtime's typed
config), conversions (core types -> ROS messages: chunks, standard action messages, diagnostics,
stats), synthetic_camera (a test / demo robot). Everything that runs without ROS (observation
assembly, the inference session, status building) is in vla_accel.runtime. Only vla_node imports
rclpy at module level.
"""
