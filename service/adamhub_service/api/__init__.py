"""HTTP only: routers, schemas, problem documents, content negotiation, OpenAPI."""
