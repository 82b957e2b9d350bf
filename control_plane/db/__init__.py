"""Database layer: engine, tables, the unit of work (the only place that commits), migrations."""
