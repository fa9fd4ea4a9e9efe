"""The ROS 2 layer: the VLA node (vla_node) and the small modules it is built from.

params (declared parameters, shared with launch and config files), inputs (messages -> Observations),
conversions (messages <-> core types, standard action messages), diagnostics (/diagnostics and
/vla/stats from core.metrics), session (model, backends, engine, loop: no ROS), synthetic_camera (a
test / demo robot). Only vla_node imports rclpy at module level.
"""
