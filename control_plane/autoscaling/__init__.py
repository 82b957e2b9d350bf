"""Autoscaling: the pure capacity controller (admission mode, desired nodes) and actuators."""
