"""Several daemons on one store and one broker: who they are, and who holds what.

* :mod:`~mysimbdp.cluster.identity`: this daemon's instance id.
* :mod:`~mysimbdp.cluster.leases`: named leases in ``mysimbdp.leases`` (one holder at a time,
  taken over when the holder stops renewing), e.g. the one instance that decides a tenant's
  consumer count.
* :mod:`~mysimbdp.cluster.instances`: the registry ``mysimbdp.instances`` with each daemon's
  heartbeat, ``GET /instances``.

The claims on files are the ledger's (:mod:`mysimbdp.batch.ledger`). Every lease here and
there is a deadline on the claimer's clock (seconds since the epoch, a number: comparable
in any store), so the instances' clocks must agree to well within ``[cluster] lease_s``.
"""
