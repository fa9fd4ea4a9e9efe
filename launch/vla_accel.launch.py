"""Launch the VLA inference node.

    ros2 launch vla_accel vla_accel.launch.py params_file:=<share>/config/jetson_tensorrt.yaml
    ros2 launch vla_accel vla_accel.launch.py backend:=onnxruntime model:=base camera_topic:=/cam/color

Arguments left empty keep the value from params_file (or the node's default). Every argument is
listed in vla_accel.ros.params.LAUNCH_ARGUMENTS with the node parameter it sets (a test checks it).
launch / launch_ros are imported inside generate_launch_description: they exist on a ROS 2 install,
not in the pip-wheel environment, where `python -m vla_accel.ros.vla_node --ros-args ...` does the same.
"""
import os

ARGUMENTS = {
    "backend": "backend to run (torch, onnxruntime, openvino, cuda, tensorrt, edgetpu, ...) or auto",
    "model": "model name (tiny, tiny-2cam, base) or path to a model spec YAML",
    "params_file": "parameters YAML, e.g. config/cpu.yaml (one per target)",
    "camera_topic": "image topic of the (first) camera",
    "instruction_topic": "std_msgs/String instruction topic",
    "namespace": "namespace for the node and its topics",
}


def _package_share() -> str:
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory("vla_accel")
    except (ImportError, LookupError):  # running from the source tree
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    default_params = os.path.join(_package_share(), "config", "cpu.yaml")
    declared = [
        DeclareLaunchArgument(name, default_value=default_params if name == "params_file" else "", description=text)
        for name, text in ARGUMENTS.items()
    ]

    def make_node(context):
        from vla_accel.ros.params import LAUNCH_ARGUMENTS, load_params_file, node_parameters

        values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
        overrides = {}
        for arg, param in LAUNCH_ARGUMENTS.items():
            if param is None or not values[arg]:
                continue
            overrides[param] = [values[arg]] if param == "camera_topics" else values[arg]
        # Validate the file and the arguments together before starting anything.
        node_parameters({**load_params_file(values["params_file"]), **overrides})
        return [
            Node(
                package="vla_accel",
                executable="vla_node",
                name="vla_node",
                namespace=values["namespace"],
                output="screen",
                parameters=[values["params_file"], overrides],
                emulate_tty=True,
            )
        ]

    return LaunchDescription([*declared, OpaqueFunction(function=make_node)])
