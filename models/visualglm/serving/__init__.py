"""`porter run visualglm serve`: VisualGLM over HTTP.

- ``protocol``: request bodies (OpenAI's chat completions, upstream's ``api.py``) checked and read into one
  ``Chat``; every fault a client can make becomes an ``APIError`` naming the field.
- ``image_input``: the one image of a chat, from a data URI, base64 or an http(s) URL, with size caps.
- ``engine``: one thread owns the model and answers queued chats in padded batches, streaming text back.
- ``app``: the FastAPI application wiring those to routes, and the chat page under ``static/``.
"""
