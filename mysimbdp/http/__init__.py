"""The HTTP endpoint: the server, its routes and the tokens that guard them."""
