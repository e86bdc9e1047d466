"""The local web page behind app.py: the engine (model, contexts, queue, one worker thread), the files it may
serve (files) and the page itself (app.html)."""
