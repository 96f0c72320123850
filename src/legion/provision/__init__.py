"""Provisioning: how many workers the work asks for, and the supervisor that runs them.

- :mod:`~legion.provision.policy`: the scaling policy, a pure function of a snapshot;
- :mod:`~legion.provision.board`: that snapshot, read from the store;
- :mod:`~legion.provision.autoscaler`: ``legion worker --autoscale``'s supervisor loop;
- :mod:`~legion.resources`: what an instance needs and a worker offers.
"""
