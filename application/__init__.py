"""Use cases: one eventsourcing Application per bounded context, processors and ports."""
