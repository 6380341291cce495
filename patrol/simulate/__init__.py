"""Simulated cameras and drones: pure, seeded event generators and a paced Kafka producer."""

from patrol.simulate.cameras import Camera, CameraSimConfig, camera_events, load_cameras
from patrol.simulate.drones import DroneRoute, DroneSimConfig, drone_events, load_routes
from patrol.simulate.events import SimEvent
from patrol.simulate.producer import BrokerUnreachable, SimSummary, StderrProgress, produce

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
