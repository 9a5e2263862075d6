"""The HTTP front end: app factory, routes, middleware and the runner."""
