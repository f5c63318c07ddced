"""Example tenant apps of the flights tenant."""
