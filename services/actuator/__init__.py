"""actuator package."""
