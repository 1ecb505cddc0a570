"""The web front: the application and its routes, the front door every route goes
through, handlers, the runner and server, the admin listener and the access log."""
