"""HTTP API tests (the contract in /work/shared/spec/api-v1.md): the real app over PostgreSQL and SQLite.

Note: under pytest's default ("prepend") import mode this package is imported as ``api`` (its
parent, tests/, has no __init__.py), the name of the application package. Submodules such as
``api.app`` still resolve to the application because the project is installed in editable mode
(setuptools' editable finder maps them); do not name a module here after one of the
application's (app, context, deps, metrics, middleware, problems, routes, schemas).
"""
