"""The host's commitments as its actuator sees them, and the grows it grants within the host's capacity. Pure: no
I/O, no asyncio; the shell (service.py) reads the driver's host view and hands it in with a ticket.

The actuator is the one place that sees every commitment on its host, whichever decider sent the command, so it
holds the upper bound (as neon's scheduler plug-in does for its agents). A VM's commitment is its online vCPUs,
or while a grow of it is under way the size granted to that grow (its reservation), whichever is larger::

    committed = Σ over the host's running VMs (managed or not) of max(online, reservation)

* A shrink is always admitted: it frees room (a full host that blocks shrinks blocks exactly what it needs).
* A grow gets the whole vCPUs that fit under the capacity (``shared.pool.host_capacity``): all it asked, part of it,
  or none (``host-full``). What is granted stays reserved until the command ends (``release``), so two grows can
  never both take the last core.
* Online counts come from the driver's host view, read fresh before each grow (``observe``). A view asked for before
  a command ended may predate its last step: for a VM released after the view's ``ticket`` the larger of the view's
  count and the one known at release stands, and a view asked for before one already taken is ignored.
* Nothing else is remembered: a restarted actuator starts from a fresh view of its host. A capacity lowered under
  running VMs strands nothing: committed stays above it, every grow is refused, and shrinks bring it back.

Memory is committed the same way, in a ledger of its own (``Reservations(host, Resource.MEMORY)``): each VM's
commitment is the larger of its memory in the host view (``HostView.vm_memory``) and the size granted to its grow,
in bytes, under the host's memory capacity (``shared.pool.memory_capacity``); a grow cut short is cut on the
hypervisor's step (``grant``'s ``step``). A driver that reports no memory leaves it unknown: nothing is judged.
"""

from __future__ import annotations

from typing import NamedTuple

from services.actuator.checks import Refusal
from services.actuator.drivers.base import HostView
from shared.messages import ErrorCode, Resource
from shared.units import align_down, format_size


class Grant(NamedTuple):
    """What a grow of ``vm`` from ``before`` to ``asked`` vCPUs (bytes, for ``resource`` memory) got: ``size``
    (``before`` ≤ size ≤ ``asked``), judged on a host of ``capacity`` with ``committed`` committed (the VM counted at
    ``before``)."""

    host: str
    vm: str
    before: int
    asked: int
    size: int
    capacity: int
    committed: int
    resource: Resource = Resource.VCPU

    @property
    def steps(self) -> int:
        return self.size - self.before

    def refusal(self) -> Refusal | None:
        """``host-full`` when the grow got less than it asked (the steps granted, if any, are still taken)."""
        if self.size >= self.asked:
            return None
        if self.resource is Resource.MEMORY:
            return Refusal(
                ErrorCode.HOST_FULL,
                f"granted {format_size(self.steps)} of {format_size(self.asked - self.before)} of memory asked: host "
                f"{self.host} has memory capacity {format_size(self.capacity)}, {format_size(self.committed)} "
                "committed",
            )
        return Refusal(
            ErrorCode.HOST_FULL,
            f"granted {self.steps} of {self.asked - self.before} vCPUs asked: host {self.host} has capacity "
            f"{self.capacity}, {self.committed} committed",
        )


class Reservations:
    """One host's ledger of commitments of one resource (vCPUs, or memory in bytes): the last host view, the grows
    under way, and the releases since."""

    def __init__(self, host: str, resource: Resource = Resource.VCPU) -> None:
        self.host = host
        self.resource = resource
        self.capacity: int | None = None  # None: no view yet (or a driver that reports none): nothing is judged
        # Whether a view ever carried a capacity: then a view without one is a gap (a VM's memory not read this time),
        # not a driver that reports none, and a grow still reads a fresh view (Ledger._judged_on_host).
        self.reported = False
        self.cpus: int | None = None
        self._online: dict[str, int] = {}
        self._reserved: dict[str, int] = {}  # VM -> the size granted to its grow under way
        self._events = 0  # releases so far: a ticket is this count when a view is asked for
        self._released: dict[str, int] = {}  # VM -> the event number of its last release
        self._seen = -1  # the ticket of the newest view taken

    @property
    def known(self) -> bool:
        return self.capacity is not None

    def ticket(self) -> int:
        """Take one just before asking the driver for its host view, and hand it to ``observe`` with the view."""
        return self._events

    def observe(self, view: HostView, capacity: int | None, ticket: int) -> bool:
        """Take a host view asked for at ``ticket``, on a host of ``capacity`` vCPUs (bytes; None: the host's memory
        is not known); False if it was ignored (a newer view was taken already; its capacity is taken all the same:
        that is today's rule, not the view's)."""
        self.reported = self.reported or capacity is not None
        if ticket < self._seen:
            # A capacity lowered since the newer view (a [[host]] rule reloaded) binds the next grant at once.
            self.capacity = capacity
            return False
        self._seen = ticket
        self.capacity, self.cpus = capacity, view.cpus
        online = dict(view.vms if self.resource is Resource.VCPU else view.vm_memory)
        for vm, event in self._released.items():
            # released after the view was asked for: the view may miss its last steps, or list it gone too early
            if event > ticket and vm in self._online:
                online[vm] = max(online.get(vm, 0), self._online[vm])
        self._online = online
        self._released = {vm: event for vm, event in self._released.items() if event > ticket}
        return True

    def commitments(self) -> dict[str, int]:
        """Each VM's commitment: max(online, reservation)."""
        return {vm: max(self._online.get(vm, 0), self._reserved.get(vm, 0)) for vm in self._online | self._reserved}

    def committed(self) -> int:
        return sum(self.commitments().values())

    def grant(self, vm: str, before: int, asked: int, step: int = 1) -> Grant:
        """Judge a grow of ``vm`` from ``before`` (its count read just now) to ``asked`` vCPUs (bytes), and reserve
        what it gets until ``release``; a grow cut short is cut down to a multiple of ``step`` (the hypervisor's
        memory block: ``asked`` is one). Needs a view (``known``)."""
        if self.capacity is None:
            raise ValueError("no host view taken yet")
        others = sum(n for other, n in self.commitments().items() if other != vm)
        room = self.capacity - others
        size = max(before, asked if asked <= room else align_down(room, step))
        if size > before:
            self._reserved[vm] = size
        return Grant(self.host, vm, before, asked, size, self.capacity, others + before, self.resource)

    def release(self, vm: str, after: int | None) -> None:
        """A command that changed ``vm`` (or was granted a grow) ended with ``after`` vCPUs read at its end; None when a
        step may still land (a driver call failed part-way): then the larger of its count and its reservation
        stands until a view asked for after this release shows the truth."""
        reserved = self._reserved.pop(vm, 0)
        self._events += 1
        self._released[vm] = self._events
        self._online[vm] = after if after is not None else max(reserved, self._online.get(vm, 0))
