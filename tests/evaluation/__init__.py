"""Evaluations: metrics against pycocotools and hand computations, ground-truth validation,
and POST/GET /v1/evaluations on PostgreSQL and SQLite."""
