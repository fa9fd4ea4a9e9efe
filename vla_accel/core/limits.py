"""Joint limits from a robot's URDF, and enforcing them on what is sent to the robot.

``parse_urdf_limits(text)`` reads every ``<joint>`` of a URDF (the ``robot_description`` string) with
``xml.etree``: ``revolute`` and ``prismatic`` joints have position limits ``lower`` / ``upper`` and a
``velocity`` limit in their ``<limit>`` tag; ``continuous`` joints only a velocity limit; ``fixed``,
``floating`` and ``planar`` joints are not commanded and are skipped. Anything malformed (not XML, no
``<robot>`` root, a ``<limit>`` attribute that is not a number, lower > upper, a negative velocity) is a
``RobotDescriptionError`` naming the joint, raised at configuration time, never while running.

``JointLimiter`` enforces them on joint positions (clip into [lower, upper], then limit the change
between consecutive points to ``velocity * dt``) and joint velocities (clip to +-velocity), and counts
every value it changed (``position_clipped``, ``velocity_limited``) for diagnostics.
Pure (xml.etree + numpy).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from vla_accel.errors import RobotDescriptionError

POSITION_LIMITED_TYPES = ("revolute", "prismatic")
COMMANDED_TYPES = ("revolute", "prismatic", "continuous")


@dataclass(frozen=True)
class JointLimit:
    name: str
    kind: str
    lower: float = -math.inf
    upper: float = math.inf
    velocity: float = math.inf


def _number(value: str | None, joint: str, attr: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise RobotDescriptionError(
            f"robot_description: joint '{joint}' <limit {attr}=\"{value}\"> is not a number") from None
    if math.isnan(number):
        raise RobotDescriptionError(f"robot_description: joint '{joint}' <limit {attr}> is NaN")
    return number


def parse_urdf_limits(text: str) -> dict[str, JointLimit]:
    """Joint name -> JointLimit for every commanded joint of a URDF string (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise RobotDescriptionError("robot_description is empty: give the URDF text (the robot_description "
                                    "parameter, or publish it on the robot_description topic)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise RobotDescriptionError(f"robot_description is not valid XML: {exc}") from None
    if root.tag != "robot":
        raise RobotDescriptionError(f"robot_description: the root element is <{root.tag}>, a URDF needs <robot>")
    limits: dict[str, JointLimit] = {}
    for joint in root.iter("joint"):
        name, kind = joint.get("name"), joint.get("type")
        if not name:
            raise RobotDescriptionError("robot_description: a <joint> has no name")
        if kind not in COMMANDED_TYPES:
            continue
        tag = joint.find("limit")
        if tag is None:
            if kind in POSITION_LIMITED_TYPES:
                raise RobotDescriptionError(
                    f"robot_description: {kind} joint '{name}' has no <limit> tag (URDF requires one)")
            limits[name] = JointLimit(name, kind)
            continue
        lower = _number(tag.get("lower"), name, "lower")
        upper = _number(tag.get("upper"), name, "upper")
        velocity = _number(tag.get("velocity"), name, "velocity")
        if velocity is not None and velocity < 0:
            raise RobotDescriptionError(f"robot_description: joint '{name}' has a negative velocity limit {velocity}")
        if kind in POSITION_LIMITED_TYPES:
            lower = 0.0 if lower is None else lower
            upper = 0.0 if upper is None else upper
            if lower > upper:
                raise RobotDescriptionError(
                    f"robot_description: joint '{name}' has lower {lower} > upper {upper}")
        else:
            lower, upper = -math.inf, math.inf
        # velocity 0 (or absent) in a URDF means "not given": no velocity limit.
        limits[name] = JointLimit(name, kind, lower, upper, velocity if velocity else math.inf)
    return limits


class JointLimiter:
    """Limits for the joints ``names`` (in the order of the output) taken from ``limits``.

    Joints absent from the URDF are an error, except channels whose name contains ``gripper`` (often
    a separate controller); those pass through unlimited."""

    def __init__(self, names: Sequence[str], limits: Mapping[str, JointLimit]):
        missing = [n for n in names if n not in limits and "gripper" not in n.lower()]
        if missing:
            raise RobotDescriptionError(
                f"robot_description has no commanded joint named {missing}; its joints: {sorted(limits)}")
        self.names = tuple(names)
        self.lower = np.array([limits[n].lower if n in limits else -math.inf for n in names])
        self.upper = np.array([limits[n].upper if n in limits else math.inf for n in names])
        self.velocity = np.array([limits[n].velocity if n in limits else math.inf for n in names])
        self.position_clipped = 0
        self.velocity_limited = 0

    def limit_positions(self, positions: np.ndarray, dt: float, start: np.ndarray | None = None) -> np.ndarray:
        """(points, joints) positions clipped to the position limits, then each point moved at most
        ``velocity * dt`` from the previous one (the first from ``start``, the last commanded position,
        when given). Returns a new float64 array; counts every value changed."""
        pos = np.array(positions, dtype=np.float64, ndmin=2)
        clipped = np.clip(pos, self.lower, self.upper)
        self.position_clipped += int(np.count_nonzero(clipped != pos))
        max_step = self.velocity * float(dt)
        out = clipped.copy()
        previous = None if start is None else np.asarray(start, dtype=np.float64)
        changed = 0
        for i in range(out.shape[0]):
            if previous is not None:
                limited = np.clip(out[i], previous - max_step, previous + max_step)
                changed += int(np.count_nonzero(limited != out[i]))
                out[i] = limited
            previous = out[i]
        self.velocity_limited += changed
        return out

    def limit_velocities(self, velocities: np.ndarray) -> np.ndarray:
        vel = np.array(velocities, dtype=np.float64, ndmin=2)
        out = np.clip(vel, -self.velocity, self.velocity)
        self.velocity_limited += int(np.count_nonzero(out != vel))
        return out

    def counters(self) -> dict[str, int]:
        return {"limits_position_clipped": self.position_clipped, "limits_velocity_limited": self.velocity_limited}
