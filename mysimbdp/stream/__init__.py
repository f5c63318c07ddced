"""Stream ingestion: tenants' RabbitMQ messages into their databases."""
