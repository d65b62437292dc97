"""Base-model ladders: tiny LMs pretrained by ftscale, and external model families."""
