"""Audit tools: reprocess a time range of detections under a separate app id and compare the
tasks it gives with what was dispatched (`patrol replay`)."""
