"""Who may do what: API keys, tenants, actions, quotas and rate limits."""
