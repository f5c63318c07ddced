"""The store: the MongoDB client the platform writes through, and the embedded MongoDB-wire server."""
