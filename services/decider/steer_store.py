"""Where the fleet's harm steers outlive the decider: each steer's state (``services.decider.harm``) in the decision
state bucket, put there whenever its price factor is set anew (once a period of sample time) and on the way out,
and read back when the decider starts and when its rules are reloaded.

A steer learns over a week (its window's half-life). A decider that restarted without it would price by the
open-loop law again for days after every upgrade or reboot, and a rule reload would do the same; with it, the
restarted decider prices its next sample as the one before the restart would have.

**Keys.** ``_steer.<owner>.<policy>.<target>``: the owner is the decider's lease when it has one (a standby that
takes over carries on the active one's steer) and its name otherwise; the target is the policy's target in %, its
``.`` written ``_`` (``0_25``). The leading ``_`` keeps the keys apart from the per-VM states'
(``<group>.<host>.<vm>``: a group name has no ``_`` in front). A state that does not decode, or was measured for
another target or with other settings, is logged and ignored: the steer starts from the law.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from services.decider.harm import HarmSteer, SteerState
from services.decider.sharding import STATE_BUCKET, open_state_bucket
from shared import bus

log = logging.getLogger(__name__)

KEY_PREFIX = "_steer"
_decoder = msgspec.msgpack.Decoder(SteerState)


def steer_key(owner: str, policy: str, target_share: float) -> str:
    return f"{KEY_PREFIX}.{owner}.{policy}.{f'{100 * target_share:g}'.replace('.', '_')}"


def decode_state(key: str, data: bytes) -> SteerState | None:
    """The steer state stored under ``key``, or None (logged) if it does not decode."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("stored harm steer %s ignored: %s", key, exc)
        return None


class SteerStore:
    """The last known state of each of one owner's steers, kept in memory (a rule reload resumes from it) and, once
    ``open`` has found the bucket, in KV (a restart resumes from it)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.states: dict[str, SteerState] = {}
        self._kv: KeyValue | None = None
        self._unsaved: set[str] = set()
        self._saving: asyncio.Task[None] | None = None

    async def open(self, js: JetStreamContext) -> int:
        """Read this owner's stored steers from the decision state bucket; from now on, every kept state is saved
        there too. Returns how many were read."""
        kv = await open_state_bucket(js)
        keys = await bus.stored_keys(js, STATE_BUCKET, f"{KEY_PREFIX}.{self.owner}.>")
        for key in keys:
            try:
                entry = await kv.get(key)
            except Exception as exc:  # a key deleted or expired since it was listed
                log.debug("stored harm steer %s not read: %s", key, exc)
                continue
            state = decode_state(key, entry.value or b"")
            if state is not None:
                self.states.setdefault(key, state)  # what this run already learned wins
        self._kv = kv
        return len(keys)

    def resume(self, policy: str, steer: HarmSteer, now: float) -> bool:
        """Carry ``steer`` on, for a next sample at ``now``, from the last state kept for it, if one fits."""
        key = steer_key(self.owner, policy, steer.target)
        state = self.states.get(key)
        if state is None:
            return False
        if not steer.resume(state, now):
            log.warning("stored harm steer %s was measured for another target or with other settings: ignored", key)
            return False
        log.info("harm steer %s resumed: price factor %.3g", key, steer.factor)
        return True

    def keep(self, policy: str, steer: HarmSteer) -> None:
        """Remember ``steer``'s state now; with a bucket, save it soon (one save at a time, the newest state)."""
        key = steer_key(self.owner, policy, steer.target)
        self.states[key] = steer.snapshot()
        if self._kv is None:
            return
        self._unsaved.add(key)
        if self._saving is None or self._saving.done():
            self._saving = asyncio.ensure_future(self._save_unsaved())

    async def flush(self) -> None:
        """Save whatever is not saved yet (on the way out)."""
        if self._saving is not None and not self._saving.done():
            await asyncio.wait([self._saving])
        await self._save_unsaved()

    async def _save_unsaved(self) -> None:
        while self._unsaved and self._kv is not None:
            key = self._unsaved.pop()
            try:
                await self._kv.put(key, msgspec.msgpack.encode(self.states[key]))
            except Exception as exc:
                log.warning("harm steer %s not saved (kept in memory; the next period tries again): %s", key, exc)
