"""``edgesplit stream``: video and camera frames through a split model, live (``runner.py``), from a source
(``sources.py``), with annotated video out (``video.py``)."""
