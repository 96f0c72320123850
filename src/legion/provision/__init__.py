"""Provisioning: how many workers the work asks for, and the supervisor that runs them.

- `legion.provision.policy`: the scaling policy, a pure function of a snapshot;
- `legion.provision.board`: that snapshot, read from the store;
- `legion.provision.autoscaler`: ``legion worker --autoscale``'s supervisor loop;
- `legion.resources`: what an instance needs and a worker offers.
"""
