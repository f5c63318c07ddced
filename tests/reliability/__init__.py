"""The reliability and security suite: faults injected, bad inputs tried, records counted."""
