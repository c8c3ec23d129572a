"""Video in and out, shared by the stages that touch pixels: extraction decodes the dataset's videos and evaluation
re-decodes them to draw attention over, and both (and the synthetic dataset) encode through one writer.

``glimpse.media.decode``: PyAV decoding with frame sampling; ``glimpse.media.encode``: the one video encoder.
Neither stage owns this module, so evaluation never imports extraction.
"""
