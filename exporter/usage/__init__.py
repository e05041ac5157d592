"""Metering on the node: processes and their jobs from /proc, GPU time from the devices,
counters that only grow, sampled on a clock and rendered on every scrape."""
