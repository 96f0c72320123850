"""Diagnostics: what legion notices about how agent code uses the event loop.

- `.watchdog`: a blocked event loop, who blocked it and where;
- `.report`: the findings, attached to the task they concern.
"""
