"""The commands an actuator has answered: their ids, kept as long as a copy of one could still be admitted.

The actuator admits only commands that expire within ``keep_s`` of their arrival (``checks.admit``), so a copy
of a command answered at time t is expired by t + ``keep_s``: remembering each id for ``keep_s`` after its
answer is enough to give every command exactly one result, and no more is kept. After a restart the memory is
filled again from the results in the event log, through a reader named by ``topology.actuator_log_reader`` (the
actuator user's permissions allow that one). Pure: times are arguments.
"""

from __future__ import annotations

from collections import OrderedDict


class AnsweredCommands:
    def __init__(self, keep_s: float) -> None:
        if keep_s <= 0:
            raise ValueError(f"keep_s must be positive, got {keep_s}")
        self.keep_s = keep_s
        self._answered_at: OrderedDict[str, float] = OrderedDict()

    def add(self, command_id: str, at: float) -> None:
        """Remember that ``command_id`` got its result at ``at``; ids older than ``keep_s`` are forgotten."""
        self._answered_at[command_id] = max(at, self._answered_at.get(command_id, at))
        self._answered_at.move_to_end(command_id)
        self.forget_before(at - self.keep_s)

    def forget_before(self, t: float) -> None:
        # Ids arrive in answer order, so the oldest are at the front. A late, older one (read back from the log)
        # waits behind a newer one; it is kept a little longer, never forgotten early.
        while self._answered_at:
            command_id, at = next(iter(self._answered_at.items()))
            if at >= t:
                return
            del self._answered_at[command_id]

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._answered_at

    def __len__(self) -> int:
        return len(self._answered_at)
