"""Diagnostics: what legion notices about how agent code uses the event loop.

- :mod:`.watchdog`: a blocked event loop, who blocked it and where;
- :mod:`.report`: the findings, attached to the task they concern.
"""
