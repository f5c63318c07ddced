"""Example tenant apps of the weather tenant."""
