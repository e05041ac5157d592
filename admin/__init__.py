"""gpuacct-admin: the control host's day-two operations (backups and restores), standing on top
of the services as gpuacct-stack does."""
