"""Capacity: the admission mode and its overrides, the autoscaling controller, its leader
lease and the actuators."""
