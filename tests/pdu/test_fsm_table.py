"""PS3.8 Table 9-10, checked cell by cell against an independent transcription.

The markdown below is copied verbatim from the project's upper-layer spec (section 7.4, itself
cross-checked against pynetdicom's and DCMTK's tables). It is parsed here, not imported, so the
test does not depend on ``pdu.fsm``'s own literal and does not need the spec file at run time.
"""

from __future__ import annotations

import pytest

from pdu.errors import LocalProtocolError, ProtocolError
from pdu.fsm import (
    ALTERNATE_NEXT,
    ARTIM_STATES,
    EXTENSIONS,
    LOCAL_EVENTS,
    TRANSITIONS,
    Action,
    Event,
    State,
    next_state,
    transition,
)

SPEC_TABLE = """
| Event | Sta1 | Sta2 | Sta3 | Sta4 | Sta5 | Sta6 | Sta7 | Sta8 | Sta9 | Sta10 | Sta11 | Sta12 | Sta13 |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| Evt1 | AE-1→4 | — | — | — | — | — | — | — | — | — | — | — | — |
| Evt2 | — | — | — | AE-2→5 | — | — | — | — | — | — | — | — | — |
| Evt3 | — | AA-1→13 | AA-8→13 | — | AE-3→6 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-6→13 |
| Evt4 | — | AA-1→13 | AA-8→13 | — | AE-4→1 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-6→13 |
| Evt5 | AE-5→2 | — | — | — | — | — | — | — | — | — | — | — | — |
| Evt6 | — | AE-6→3/13 | AA-8→13 | — | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-7→13 |
| Evt7 | — | — | AE-7→6 | — | — | — | — | — | — | — | — | — | — |
| Evt8 | — | — | AE-8→13 | — | — | — | — | — | — | — | — | — | — |
| Evt9 | — | — | — | — | — | DT-1→6 | — | AR-7→8 | — | — | — | — | — |
| Evt10 | — | AA-1→13 | AA-8→13 | — | AA-8→13 | DT-2→6 | AR-6→7 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-6→13 |
| Evt11 | — | — | — | — | — | AR-1→7 | — | — | — | — | — | — | — |
| Evt12 | — | AA-1→13 | AA-8→13 | — | AA-8→13 | AR-2→8 | AR-8→9/10 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-6→13 |
| Evt13 | — | AA-1→13 | AA-8→13 | — | AA-8→13 | AA-8→13 | AR-3→1 | AA-8→13 | AA-8→13 | AR-10→12 | AR-3→1 | AA-8→13 | AA-6→13 |
| Evt14 | — | — | — | — | — | — | — | AR-4→13 | AR-9→11 | — | — | AR-4→13 | — |
| Evt15 | — | — | AA-1→13 | AA-2→1 | AA-1→13 | AA-1→13 | AA-1→13 | AA-1→13 | AA-1→13 | AA-1→13 | AA-1→13 | AA-1→13 | — |
| Evt16 | — | AA-2→1 | AA-3→1 | — | AA-3→1 | AA-3→1 | AA-3→1 | AA-3→1 | AA-3→1 | AA-3→1 | AA-3→1 | AA-3→1 | AA-2→1 |
| Evt17 | — | AA-5→1 | AA-4→1 | AA-4→1 | AA-4→1 | AA-4→1 | AA-4→1 | AA-4→1 | AA-4→1 | AA-4→1 | AA-4→1 | AA-4→1 | AR-5→1 |
| Evt18 | — | AA-2→1 | — | — | — | — | — | — | — | — | — | — | AA-2→1 |
| Evt19 | — | AA-1→13 | AA-8→13 | — | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-8→13 | AA-7→13 |
"""

Cell = tuple[str, tuple[int, ...]]


def _parse(text: str) -> dict[tuple[int, int], Cell]:
    """``(state, event) -> (action name, next state numbers)`` for each defined cell."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    states = [int(h.removeprefix("Sta")) for h in header[1:]]
    cells: dict[tuple[int, int], Cell] = {}
    for line in lines[2:]:
        parts = [c.strip() for c in line.strip("|").split("|")]
        event = int(parts[0].removeprefix("Evt"))
        assert len(parts) == 1 + len(states), line
        for state, text_cell in zip(states, parts[1:], strict=True):
            if text_cell == "\u2014":
                continue
            action, _, nxt = text_cell.partition("\u2192")
            cells[(state, event)] = (action, tuple(int(n) for n in nxt.split("/")))
    return cells


SPEC = _parse(SPEC_TABLE)
ALL_CELLS = [(s, e) for s in State for e in Event]


def test_spec_transcription_is_complete() -> None:
    assert len(SPEC) == 123
    assert len(ALL_CELLS) == 13 * 19
    assert len(TRANSITIONS) == 123


@pytest.mark.parametrize(("state", "event"), ALL_CELLS, ids=lambda v: str(v))
def test_cell(state: State, event: Event) -> None:
    expected = SPEC.get((state.value, event.value))
    cell = TRANSITIONS.get((state, event))
    if expected is None:
        assert cell is None
        return
    assert cell is not None
    action, nxt = cell
    name, next_states = expected
    assert action is Action(name)
    assert action.value == name
    # the table holds the default (first) next state; a two-way cell has its alternate apart
    assert nxt.value == next_states[0]
    if len(next_states) == 2:
        assert ALTERNATE_NEXT[(state, event)].value == next_states[1]
    else:
        assert (state, event) not in ALTERNATE_NEXT


def test_only_the_two_branching_cells_have_alternates() -> None:
    assert set(ALTERNATE_NEXT) == {(State.STA2, Event.EVT6), (State.STA7, Event.EVT12)}
    assert TRANSITIONS[(State.STA2, Event.EVT6)][0] is Action.AE_6
    assert TRANSITIONS[(State.STA7, Event.EVT12)][0] is Action.AR_8
    assert next_state(State.STA2, Event.EVT6, alternate=True) is State.STA13
    assert next_state(State.STA7, Event.EVT12, alternate=True) is State.STA10
    assert next_state(State.STA7, Event.EVT12) is State.STA9


def test_extensions_fill_only_blank_cells() -> None:
    for key in EXTENSIONS:
        assert key not in TRANSITIONS
        assert (key[0].value, key[1].value) not in SPEC


def test_every_action_is_used() -> None:
    assert {a for a, _ in TRANSITIONS.values()} == set(Action)


def test_missing_cell_errors_name_state_and_event() -> None:
    with pytest.raises(LocalProtocolError, match=r"Evt9 in Sta2"):
        transition(State.STA2, Event.EVT9)
    with pytest.raises(ProtocolError, match=r"Evt2 in Sta6") as info:
        transition(State.STA6, Event.EVT2)
    assert not isinstance(info.value, LocalProtocolError)


def test_local_events() -> None:
    assert {e.value for e in LOCAL_EVENTS} == {1, 7, 8, 9, 11, 14, 15}


def test_artim_states_follow_the_table() -> None:
    """ARTIM starters lead into ARTIM_STATES; stoppers lead out of them."""
    starters = {Action.AE_5, Action.AE_8, Action.AR_4, Action.AA_1, Action.AA_8}
    for (_, _), (action, nxt) in TRANSITIONS.items():
        if action in starters:
            assert nxt in ARTIM_STATES
