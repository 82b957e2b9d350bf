"""Autoscaling: the pure capacity controller (admission mode and desired nodes) and its actuators."""
