"""gpuacct's Grafana dashboards (dashboards/*.json), packaged so that `gpuacct-admin init`
places them, with provisioning files, for a Grafana on the control host."""
