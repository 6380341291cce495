"""Simulated cameras and drones: pure, seeded event generators and a paced Kafka producer."""

from patrol.devtools.simulate.cameras import Camera, CameraSimConfig, camera_events, load_cameras
from patrol.devtools.simulate.drones import DroneRoute, DroneSimConfig, drone_events, load_routes
from patrol.devtools.simulate.events import SimEvent
from patrol.devtools.simulate.producer import BrokerUnreachable, SimSummary, StderrProgress, produce

__all__ = [
    "BrokerUnreachable",
    "Camera",
    "CameraSimConfig",
    "DroneRoute",
    "DroneSimConfig",
    "SimEvent",
    "SimSummary",
    "StderrProgress",
    "camera_events",
    "drone_events",
    "load_cameras",
    "load_routes",
    "produce",
]
