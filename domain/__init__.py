"""The pure domain model: aggregates, events, value objects and domain errors."""
