"""The EC2 Query API: request parameters, XML rendering, one module per feature area,
and the dispatch table (``dispatch.ACTIONS``) that names them all."""
