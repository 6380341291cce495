"""The pure decisions of patrol: state and event in, new state and effects out.

Nothing here awaits, reads the clock or touches Kafka; the faust agents call these functions,
store the returned state (as the bytes the ``encode_*`` functions give) and emit the effects.

- ``grace``: the parking grace rule (CONTRACT §5), one state per (zone, plate) case key.
- ``incidents``: roadside vending and open burning grouped into incidents (CONTRACT §6).
- ``routing``: department, priority and due time of each task.
"""
