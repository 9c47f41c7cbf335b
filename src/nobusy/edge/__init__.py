"""The HTTP edge: what meets the socket before any handler runs.

``server`` runs uvicorn (uvloop, httptools, safe binding, limits on headers, workers);
``access`` is the outermost middleware, one access line per request;
``middleware`` is the layer inside it: request id, response headers, the body's size and pace;
``policy`` is the edge policy it applies first: client address, ``Origin``, ``Host``, body type;
``auth`` checks the API key before the body is read and slows bad-key floods;
``drain`` lets a process told to stop finish the answers it has begun, admitting none.
Importing this package imports none of them.
"""
