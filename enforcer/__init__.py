"""gpuacct-enforcer: turns Alertmanager webhooks into per-user node policy."""
