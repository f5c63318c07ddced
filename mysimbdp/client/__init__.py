"""Clients tenants run on their own machines: the upload client and the stream publisher."""
