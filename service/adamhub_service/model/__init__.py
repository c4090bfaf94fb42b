"""Plain values at the bottom of the service: records, settings, the caller, outcomes,
log entries, and the protocols of the stores the domain depends on."""
