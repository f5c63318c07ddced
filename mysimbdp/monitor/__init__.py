"""Monitoring: events become reports, statistics and metrics; rules turn them into scaling decisions."""
