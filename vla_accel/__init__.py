"""vla_accel: run vision-language-action models on robot accelerators.

The ROS build installs the generated messages (vla_accel.msg) into another copy of this package on
sys.path; extend_path merges both copies so `import vla_accel.msg` works next to the source tree.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
