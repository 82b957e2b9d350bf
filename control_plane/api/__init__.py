"""HTTP layer: dependencies, error mapping, thin routes."""
