"""The store: the MongoDB client and its health (``client``), the one write path, retry policy
and target check of batch and stream (``writes``), the ``_rejects`` schema (``rejects``), the
schema contracts checked before a write (``contracts``) and the schema history they record
(``schemas``), and the embedded MongoDB-wire server (``embedded``)."""
