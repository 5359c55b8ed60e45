"""The DICOM Upper Layer state machine as data: states, events, actions and PS3.8 Table 9-10.

Only data lives here; :mod:`pdu.machine` runs the actions. ``TRANSITIONS`` is a literal
transcription of the standard's table (123 defined cells); a blank cell of the standard is absent.

Two actions have a branch in the standard, and the table cell holds the **default** next state:

* AE-6 (Sta2, Evt6): "RQ acceptable -> Sta3, else -> Sta13". The cell says Sta3.
* AR-8 (Sta7, Evt12): "association requestor -> Sta9, else -> Sta10". The cell says Sta9.

The other possibility of each branch is in ``ALTERNATE_NEXT`` (keyed by the same cell), and the
action only *chooses* (returns ``True`` for "take the alternate"): it never names a state. So every
next state is written once, in this module, next to the cell it belongs to.

``EXTENSIONS`` holds the one cell we define where the standard has none: a local A-ABORT request in
Sta2 (transport open, no A-ASSOCIATE-RQ yet) closes the transport as AA-2 does (PS3.8 is silent;
the spec notes advise "harmless no-op / close transport"). It is kept apart so that
``TRANSITIONS`` stays the standard's table exactly.
"""

from __future__ import annotations

from enum import Enum, IntEnum

from .errors import LocalProtocolError, ProtocolError


class State(IntEnum):
    """PS3.8 9.2.1 states; the value is the standard's number."""

    STA1 = 1  # Idle
    STA2 = 2  # Transport open (acceptor), awaiting A-ASSOCIATE-RQ PDU
    STA3 = 3  # Awaiting local A-ASSOCIATE response primitive
    STA4 = 4  # Awaiting transport connection opening to complete (requestor)
    STA5 = 5  # Awaiting A-ASSOCIATE-AC or -RJ PDU
    STA6 = 6  # Association established, data transfer
    STA7 = 7  # Awaiting A-RELEASE-RP PDU
    STA8 = 8  # Awaiting local A-RELEASE response primitive
    STA9 = 9  # Release collision requestor side; awaiting local A-RELEASE response
    STA10 = 10  # Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = 11  # Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = 12  # Release collision acceptor side; awaiting local A-RELEASE response
    STA13 = 13  # Awaiting transport connection close indication

    def __str__(self) -> str:
        return f"Sta{self.value}"


class Event(IntEnum):
    """PS3.8 9.2.2 events; the value is the standard's number."""

    EVT1 = 1  # A-ASSOCIATE request (local user)
    EVT2 = 2  # Transport connect confirmation
    EVT3 = 3  # A-ASSOCIATE-AC PDU received
    EVT4 = 4  # A-ASSOCIATE-RJ PDU received
    EVT5 = 5  # Transport connection indication
    EVT6 = 6  # A-ASSOCIATE-RQ PDU received
    EVT7 = 7  # A-ASSOCIATE response primitive (accept)
    EVT8 = 8  # A-ASSOCIATE response primitive (reject)
    EVT9 = 9  # P-DATA request primitive
    EVT10 = 10  # P-DATA-TF PDU received
    EVT11 = 11  # A-RELEASE request primitive
    EVT12 = 12  # A-RELEASE-RQ PDU received
    EVT13 = 13  # A-RELEASE-RP PDU received
    EVT14 = 14  # A-RELEASE response primitive
    EVT15 = 15  # A-ABORT request primitive
    EVT16 = 16  # A-ABORT PDU received
    EVT17 = 17  # Transport connection closed indication
    EVT18 = 18  # ARTIM timer expired
    EVT19 = 19  # Unrecognized or invalid PDU received

    def __str__(self) -> str:
        return f"Evt{self.value}"


class Action(Enum):
    """PS3.8 9.2.3 actions; the value is the standard's name."""

    AE_1 = "AE-1"
    AE_2 = "AE-2"
    AE_3 = "AE-3"
    AE_4 = "AE-4"
    AE_5 = "AE-5"
    AE_6 = "AE-6"
    AE_7 = "AE-7"
    AE_8 = "AE-8"
    DT_1 = "DT-1"
    DT_2 = "DT-2"
    AR_1 = "AR-1"
    AR_2 = "AR-2"
    AR_3 = "AR-3"
    AR_4 = "AR-4"
    AR_5 = "AR-5"
    AR_6 = "AR-6"
    AR_7 = "AR-7"
    AR_8 = "AR-8"
    AR_9 = "AR-9"
    AR_10 = "AR-10"
    AA_1 = "AA-1"
    AA_2 = "AA-2"
    AA_3 = "AA-3"
    AA_4 = "AA-4"
    AA_5 = "AA-5"
    AA_6 = "AA-6"
    AA_7 = "AA-7"
    AA_8 = "AA-8"

    def __str__(self) -> str:
        return self.value


#: Events that are primitives of the local user (a blank cell there is the user's mistake).
LOCAL_EVENTS = frozenset(
    {Event.EVT1, Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14, Event.EVT15}
)
#: Events that are a received PDU (a decode error counts: Evt19).
PDU_EVENTS = frozenset(
    {Event.EVT3, Event.EVT4, Event.EVT6, Event.EVT10, Event.EVT12, Event.EVT13, Event.EVT16,
     Event.EVT19}
)
#: States in which the standard has the ARTIM timer running (PS3.8 9.1.4 and Table 9-10).
ARTIM_STATES = frozenset({State.STA2, State.STA13})

_S = State
_E = Event
_A = Action
# fmt: off
#: PS3.8 Table 9-10, one line per cell, rows in the standard's order (event by event).
TRANSITIONS: dict[tuple[State, Event], tuple[Action, State]] = {
    # Evt1: A-ASSOCIATE request (local user)
    (_S.STA1, _E.EVT1): (_A.AE_1, _S.STA4),
    # Evt2: transport connect confirmation
    (_S.STA4, _E.EVT2): (_A.AE_2, _S.STA5),
    # Evt3: A-ASSOCIATE-AC PDU received
    (_S.STA2, _E.EVT3): (_A.AA_1, _S.STA13),
    (_S.STA3, _E.EVT3): (_A.AA_8, _S.STA13),
    (_S.STA5, _E.EVT3): (_A.AE_3, _S.STA6),
    (_S.STA6, _E.EVT3): (_A.AA_8, _S.STA13),
    (_S.STA7, _E.EVT3): (_A.AA_8, _S.STA13),
    (_S.STA8, _E.EVT3): (_A.AA_8, _S.STA13),
    (_S.STA9, _E.EVT3): (_A.AA_8, _S.STA13),
    (_S.STA10, _E.EVT3): (_A.AA_8, _S.STA13),
    (_S.STA11, _E.EVT3): (_A.AA_8, _S.STA13),
    (_S.STA12, _E.EVT3): (_A.AA_8, _S.STA13),
    (_S.STA13, _E.EVT3): (_A.AA_6, _S.STA13),
    # Evt4: A-ASSOCIATE-RJ PDU received
    (_S.STA2, _E.EVT4): (_A.AA_1, _S.STA13),
    (_S.STA3, _E.EVT4): (_A.AA_8, _S.STA13),
    (_S.STA5, _E.EVT4): (_A.AE_4, _S.STA1),
    (_S.STA6, _E.EVT4): (_A.AA_8, _S.STA13),
    (_S.STA7, _E.EVT4): (_A.AA_8, _S.STA13),
    (_S.STA8, _E.EVT4): (_A.AA_8, _S.STA13),
    (_S.STA9, _E.EVT4): (_A.AA_8, _S.STA13),
    (_S.STA10, _E.EVT4): (_A.AA_8, _S.STA13),
    (_S.STA11, _E.EVT4): (_A.AA_8, _S.STA13),
    (_S.STA12, _E.EVT4): (_A.AA_8, _S.STA13),
    (_S.STA13, _E.EVT4): (_A.AA_6, _S.STA13),
    # Evt5: transport connection indication
    (_S.STA1, _E.EVT5): (_A.AE_5, _S.STA2),
    # Evt6: A-ASSOCIATE-RQ PDU received (AE-6: default Sta3, alternate Sta13)
    (_S.STA2, _E.EVT6): (_A.AE_6, _S.STA3),
    (_S.STA3, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA5, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA6, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA7, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA8, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA9, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA10, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA11, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA12, _E.EVT6): (_A.AA_8, _S.STA13),
    (_S.STA13, _E.EVT6): (_A.AA_7, _S.STA13),
    # Evt7: A-ASSOCIATE response primitive (accept)
    (_S.STA3, _E.EVT7): (_A.AE_7, _S.STA6),
    # Evt8: A-ASSOCIATE response primitive (reject)
    (_S.STA3, _E.EVT8): (_A.AE_8, _S.STA13),
    # Evt9: P-DATA request primitive
    (_S.STA6, _E.EVT9): (_A.DT_1, _S.STA6),
    (_S.STA8, _E.EVT9): (_A.AR_7, _S.STA8),
    # Evt10: P-DATA-TF PDU received
    (_S.STA2, _E.EVT10): (_A.AA_1, _S.STA13),
    (_S.STA3, _E.EVT10): (_A.AA_8, _S.STA13),
    (_S.STA5, _E.EVT10): (_A.AA_8, _S.STA13),
    (_S.STA6, _E.EVT10): (_A.DT_2, _S.STA6),
    (_S.STA7, _E.EVT10): (_A.AR_6, _S.STA7),
    (_S.STA8, _E.EVT10): (_A.AA_8, _S.STA13),
    (_S.STA9, _E.EVT10): (_A.AA_8, _S.STA13),
    (_S.STA10, _E.EVT10): (_A.AA_8, _S.STA13),
    (_S.STA11, _E.EVT10): (_A.AA_8, _S.STA13),
    (_S.STA12, _E.EVT10): (_A.AA_8, _S.STA13),
    (_S.STA13, _E.EVT10): (_A.AA_6, _S.STA13),
    # Evt11: A-RELEASE request primitive
    (_S.STA6, _E.EVT11): (_A.AR_1, _S.STA7),
    # Evt12: A-RELEASE-RQ PDU received (AR-8: default Sta9, alternate Sta10)
    (_S.STA2, _E.EVT12): (_A.AA_1, _S.STA13),
    (_S.STA3, _E.EVT12): (_A.AA_8, _S.STA13),
    (_S.STA5, _E.EVT12): (_A.AA_8, _S.STA13),
    (_S.STA6, _E.EVT12): (_A.AR_2, _S.STA8),
    (_S.STA7, _E.EVT12): (_A.AR_8, _S.STA9),
    (_S.STA8, _E.EVT12): (_A.AA_8, _S.STA13),
    (_S.STA9, _E.EVT12): (_A.AA_8, _S.STA13),
    (_S.STA10, _E.EVT12): (_A.AA_8, _S.STA13),
    (_S.STA11, _E.EVT12): (_A.AA_8, _S.STA13),
    (_S.STA12, _E.EVT12): (_A.AA_8, _S.STA13),
    (_S.STA13, _E.EVT12): (_A.AA_6, _S.STA13),
    # Evt13: A-RELEASE-RP PDU received
    (_S.STA2, _E.EVT13): (_A.AA_1, _S.STA13),
    (_S.STA3, _E.EVT13): (_A.AA_8, _S.STA13),
    (_S.STA5, _E.EVT13): (_A.AA_8, _S.STA13),
    (_S.STA6, _E.EVT13): (_A.AA_8, _S.STA13),
    (_S.STA7, _E.EVT13): (_A.AR_3, _S.STA1),
    (_S.STA8, _E.EVT13): (_A.AA_8, _S.STA13),
    (_S.STA9, _E.EVT13): (_A.AA_8, _S.STA13),
    (_S.STA10, _E.EVT13): (_A.AR_10, _S.STA12),
    (_S.STA11, _E.EVT13): (_A.AR_3, _S.STA1),
    (_S.STA12, _E.EVT13): (_A.AA_8, _S.STA13),
    (_S.STA13, _E.EVT13): (_A.AA_6, _S.STA13),
    # Evt14: A-RELEASE response primitive
    (_S.STA8, _E.EVT14): (_A.AR_4, _S.STA13),
    (_S.STA9, _E.EVT14): (_A.AR_9, _S.STA11),
    (_S.STA12, _E.EVT14): (_A.AR_4, _S.STA13),
    # Evt15: A-ABORT request primitive
    (_S.STA3, _E.EVT15): (_A.AA_1, _S.STA13),
    (_S.STA4, _E.EVT15): (_A.AA_2, _S.STA1),
    (_S.STA5, _E.EVT15): (_A.AA_1, _S.STA13),
    (_S.STA6, _E.EVT15): (_A.AA_1, _S.STA13),
    (_S.STA7, _E.EVT15): (_A.AA_1, _S.STA13),
    (_S.STA8, _E.EVT15): (_A.AA_1, _S.STA13),
    (_S.STA9, _E.EVT15): (_A.AA_1, _S.STA13),
    (_S.STA10, _E.EVT15): (_A.AA_1, _S.STA13),
    (_S.STA11, _E.EVT15): (_A.AA_1, _S.STA13),
    (_S.STA12, _E.EVT15): (_A.AA_1, _S.STA13),
    # Evt16: A-ABORT PDU received
    (_S.STA2, _E.EVT16): (_A.AA_2, _S.STA1),
    (_S.STA3, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA5, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA6, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA7, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA8, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA9, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA10, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA11, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA12, _E.EVT16): (_A.AA_3, _S.STA1),
    (_S.STA13, _E.EVT16): (_A.AA_2, _S.STA1),
    # Evt17: transport connection closed indication
    (_S.STA2, _E.EVT17): (_A.AA_5, _S.STA1),
    (_S.STA3, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA4, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA5, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA6, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA7, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA8, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA9, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA10, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA11, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA12, _E.EVT17): (_A.AA_4, _S.STA1),
    (_S.STA13, _E.EVT17): (_A.AR_5, _S.STA1),
    # Evt18: ARTIM timer expired
    (_S.STA2, _E.EVT18): (_A.AA_2, _S.STA1),
    (_S.STA13, _E.EVT18): (_A.AA_2, _S.STA1),
    # Evt19: unrecognized or invalid PDU received
    (_S.STA2, _E.EVT19): (_A.AA_1, _S.STA13),
    (_S.STA3, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA5, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA6, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA7, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA8, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA9, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA10, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA11, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA12, _E.EVT19): (_A.AA_8, _S.STA13),
    (_S.STA13, _E.EVT19): (_A.AA_7, _S.STA13),
}

#: The other branch of the two two-way cells (see the module docstring).
ALTERNATE_NEXT: dict[tuple[State, Event], State] = {
    (_S.STA2, _E.EVT6): _S.STA13,   # AE-6: the RQ is not acceptable (A-ASSOCIATE-RJ sent)
    (_S.STA7, _E.EVT12): _S.STA10,  # AR-8: we are the association acceptor
}

#: Cells we define where the standard has none (not part of TRANSITIONS).
EXTENSIONS: dict[tuple[State, Event], tuple[Action, State]] = {
    (_S.STA2, _E.EVT15): (_A.AA_2, _S.STA1),  # local abort before any A-ASSOCIATE-RQ: just close
}
# fmt: on


def transition(state: State, event: Event) -> tuple[Action, State]:
    """Return the standard's cell for ``(state, event)``.

    A blank cell raises :class:`LocalProtocolError` for a local primitive (the user called it in the
    wrong state) and :class:`ProtocolError` otherwise; the message names the state and the event.
    """
    cell = TRANSITIONS.get((state, event))
    if cell is None:
        message = f"no transition for {event!s} in {state!s} (PS3.8 Table 9-10 has no cell)"
        if event in LOCAL_EVENTS:
            raise LocalProtocolError(message)
        raise ProtocolError(message)
    return cell


def next_state(state: State, event: Event, *, alternate: bool = False) -> State:
    """The next state of a cell; ``alternate`` picks the other branch of AE-6 / AR-8."""
    if alternate:
        return ALTERNATE_NEXT[(state, event)]
    return transition(state, event)[1]
