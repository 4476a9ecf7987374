"""One module per resource; each is thin: parse, call services, shape the answer."""
