"""Read models: each projection owns its tables, its event handlers and its queries."""
