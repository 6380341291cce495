"""The pure decisions of patrol: state and event in, new state and effects out.

Nothing here awaits, reads the clock or touches Kafka; the agents (`patrol.worker`) call these
functions, store the returned state (as the bytes the ``encode_*`` functions give) and emit the
effects.

- ``models``: the messages of the interface (pydantic), ``ids``: stable ids, ``texts``: Chinese.
- ``zones``: the county's zones and their restricted hours; ``routing``: who gets which task.
- ``decode``: raw Kafka values into Detections, or specific reasons they cannot be used.
- ``grace``: the parking grace rule, one state per (zone, plate) case key.
- ``incidents``: roadside vending and open burning grouped into incidents.
"""
