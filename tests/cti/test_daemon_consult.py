"""Consult through the real daemon (``twistd -n gateway``) as the Bridge Client of the strict
processor-bridge simulator: every flow and failure path of issue 16 as the agent desktop drives it.

The simulator registers and initialises the consult conversation after the consult response names
it, checks that each request gets exactly one response, the focus changes and the order of a
transfer to consult; each test ends with its list of protocol violations empty (the ``bridge``
fixture). Who hears whom in each state is proven by tone detection on the registry
(tests/core/test_registry_consult.py): the requests here are those very commands.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from .test_daemon import bridge, wait  # noqa: F401 (bridge is a fixture)

pytestmark = pytest.mark.timeout(120)

CONSULTED = "5552222"
BUSY, FAILED, NO_ANSWER = "5550003", "5559993", "5558883"
#: answers, then hangs up by itself 2 s later (a [[pbx.sim.rules]] entry in test_daemon.CONFIG)
LEAVES = "5557773"


@defer.inlineCallbacks
def talking(bridge, hang_up_after=None):
    """An inbound call answered by alice: (call id, interaction target, primary conversation target)."""
    conversation = bridge.sim.when_destination("conversation")
    body = {"caller_id": "5551234", "did": "103"}
    if hang_up_after is not None:
        body["hang_up_after"] = hang_up_after
    _, call = yield bridge.daemon.api("POST", "/api/sim/inbound", body, expect=201)
    primary = (yield wait(conversation)).target
    answered = bridge.event("conversation.talking", primary)
    yield bridge.ok("accept")
    yield answered
    return call["call_id"], primary.rpartition(".")[0], primary


@defer.inlineCallbacks
def consult(bridge, interaction, number=CONSULTED, answered=True):
    """Consult ``number``: (consult call id, its conversation target), once it talks unless told not to."""
    initialised = bridge.sim.when_destination("conversation")
    response = yield bridge.ok("consult", target=interaction, destination=number)
    consult_id = response.body["id"]
    target = f"{interaction}.{consult_id}"
    assert (yield wait(initialised)).target == target
    focus = yield bridge.event("interaction.focuschanged", interaction)
    assert focus.body == {"id": consult_id}
    if answered:
        yield bridge.event("conversation.talking", target)
    return consult_id, target


def names(bridge, target):
    return bridge.sim.event_names(target)


@defer.inlineCallbacks
def call(bridge, call_id):
    _, body = yield bridge.daemon.api("GET", f"/api/calls/{call_id}", expect=200)
    return body


@defer.inlineCallbacks
def cdr(bridge, call_id):
    """The call's CDR, once the store's thread has written it."""
    for _ in range(200):
        code, body = yield bridge.daemon.api("GET", f"/api/cdrs/{call_id}")
        if code == 200:
            return body
        yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"no CDR for {call_id}")


@defer.inlineCallbacks
def until(check, seconds=10.0):
    """Wait until ``check()`` is true (looked at every 50 ms)."""
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        yield deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{check.__doc__ or check} never came true")


@defer.inlineCallbacks
def back_on_hold(bridge, call_id, interaction, primary, consult_target, *before_ended):
    """The consult ended (after ``before_ended``) and was disposed, the focus returned to the held
    primary, and the agent retrieves it."""

    def focus_back():
        """the focus returned to the primary"""
        last = bridge.sim.event_log[-1]
        return (last.target, last.name, last.body) == (interaction, "interaction.focuschanged", {"id": "primary"})

    yield until(focus_back)
    assert names(bridge, consult_target)[-(2 + len(before_ended)):] == [
        *before_ended, "conversation.ended", "conversation.disposed"]
    assert (yield call(bridge, call_id))["state"] == "HELD"
    retrieved = bridge.event("conversation.talking", primary)
    yield bridge.ok("retrieve", target=primary)
    yield retrieved


@pytest_twisted.inlineCallbacks
def test_an_attended_transfer_with_the_cdrs_linked(bridge):
    yield bridge.start()
    for capability in ("consult", "alternate", "transfer-to-consult", "conference-in-consult"):
        assert bridge.sim.capabilities[capability] is True, capability
    call_id, interaction, primary = yield talking(bridge)
    consult_id, consult_target = yield consult(bridge, interaction)
    assert ((yield call(bridge, call_id))["state"], (yield call(bridge, consult_id))["consult_of"]) == ("HELD", call_id)
    ended = bridge.event("interaction.ended", interaction)
    yield bridge.ok("transfer-to-consult", target=interaction)
    yield ended
    assert names(bridge, primary)[-2:] == ["conversation.ended", "conversation.disposed"]
    assert names(bridge, consult_target)[-2:] == ["conversation.ended", "conversation.disposed"]
    _, listed = yield bridge.daemon.api("GET", "/api/calls")
    [successor] = listed["calls"]
    assert (successor["state"], successor["extension"]) == ("TALKING", None)
    assert successor["attributes"]["transferred_from"] == call_id
    primary_cdr = yield cdr(bridge, call_id)
    consult_cdr = yield cdr(bridge, consult_id)
    assert (primary_cdr["cause"], primary_cdr["consults"]) == ("transferred", [consult_id])
    assert (consult_cdr["cause"], consult_cdr["consult_of"]) == ("transferred", call_id)
    yield bridge.ok("complete", target=interaction)
    yield bridge.ok("dispose-interaction", target=interaction)


@pytest_twisted.inlineCallbacks
def test_busy_failed_and_unanswered_consults_leave_the_primary_held_then_alternate_and_conference(bridge):
    yield bridge.start()
    call_id, interaction, primary = yield talking(bridge)
    for number, before in ((BUSY, "conversation.busy"), (FAILED, "conversation.failed"),
                           (NO_ANSWER, "conversation.failed")):
        consult_id, consult_target = yield consult(bridge, interaction, number, answered=False)
        yield back_on_hold(bridge, call_id, interaction, primary, consult_target, before)
        assert (yield call(bridge, consult_id))["cause"] == {BUSY: "busy", FAILED: "failed",
                                                             NO_ANSWER: "no_answer"}[number]
    consult_id, consult_target = yield consult(bridge, interaction)
    swapped = bridge.event("interaction.focuschanged", interaction)
    yield bridge.ok("alternate", target=interaction)
    assert (yield swapped).body == {"id": "primary"}
    assert ((yield call(bridge, call_id))["state"], (yield call(bridge, consult_id))["state"]) == ("TALKING", "HELD")
    added = bridge.event("conversation.partyadded", primary)
    yield bridge.ok("conference-in-consult", target=interaction)
    assert (yield added).body == {"number": CONSULTED, "name": ""}
    assert names(bridge, consult_target)[-2:] == ["conversation.ended", "conversation.disposed"]
    assert [p["number"] for p in (yield call(bridge, call_id))["parties"]] == ["5551234", CONSULTED]
    assert (yield cdr(bridge, consult_id))["cause"] == "conferenced"
    ended = bridge.event("interaction.ended", interaction)
    yield bridge.ok("release", target=primary)
    yield ended


@pytest_twisted.inlineCallbacks
def test_the_agent_releases_the_consult_then_the_primary_during_a_second_consult(bridge):
    yield bridge.start()
    call_id, interaction, primary = yield talking(bridge)
    consult_id, consult_target = yield consult(bridge, interaction)
    yield bridge.ok("release", target=consult_target)
    yield back_on_hold(bridge, call_id, interaction, primary, consult_target)

    consult_id, consult_target = yield consult(bridge, interaction, "5553333")
    primary_ended = bridge.event("conversation.ended", primary)
    yield bridge.ok("release", target=primary)
    yield primary_ended
    assert (yield call(bridge, consult_id))["state"] == "TALKING", "the consult goes on"
    assert names(bridge, interaction)[-1] != "interaction.ended"
    ended = bridge.event("interaction.ended", interaction)
    yield bridge.ok("release", target=consult_target)
    yield ended
    assert names(bridge, consult_target)[-2:] == ["conversation.ended", "conversation.disposed"]


@pytest_twisted.inlineCallbacks
def test_the_primary_party_hangs_up_during_the_consult(bridge):
    yield bridge.start()
    call_id, interaction, primary = yield talking(bridge, hang_up_after=1.5)
    primary_ended = bridge.event("conversation.ended", primary)
    consult_id, consult_target = yield consult(bridge, interaction)
    yield primary_ended
    assert (yield call(bridge, call_id))["cause"] == "remote_hangup"
    assert (yield call(bridge, consult_id))["state"] == "TALKING"
    ended = bridge.event("interaction.ended", interaction)
    yield bridge.ok("release", target=consult_target)
    yield ended


@pytest_twisted.inlineCallbacks
def test_the_agent_removing_the_consulted_party_and_refused_requests(bridge):
    yield bridge.start()
    call_id, interaction, primary = yield talking(bridge)
    for verb in ("alternate", "transfer-to-consult", "conference-in-consult"):
        response = yield bridge.send(verb, target=interaction)
        assert not response.ok and "in no consult" in response.header.error_message, verb
    consult_id, consult_target = yield consult(bridge, interaction)
    response = yield bridge.send("consult", target=interaction, destination="5553333")
    assert not response.ok and "consulting already" in response.header.error_message
    yield bridge.ok("removeparty", target=consult_target, number=CONSULTED)  # the agent drops the consulted party
    yield back_on_hold(bridge, call_id, interaction, primary, consult_target)
    ended = bridge.event("interaction.ended", interaction)
    yield bridge.ok("release", target=primary)
    yield ended


@pytest_twisted.inlineCallbacks
def test_the_consulted_party_hangs_up(bridge):
    yield bridge.start()
    call_id, interaction, primary = yield talking(bridge)
    consult_id, consult_target = yield consult(bridge, interaction, LEAVES)
    yield back_on_hold(bridge, call_id, interaction, primary, consult_target)  # it hangs up 2 s after answering
    log = [(e.target, e.name) for e in bridge.sim.event_log]
    at = log.index((consult_target, "conversation.ended"))
    assert log[at:at + 4] == [(consult_target, "conversation.ended"), (consult_target, "conversation.disposed"),
                              (interaction, "interaction.focuschanged"), (primary, "conversation.talking")]
    assert names(bridge, consult_target) == [
        "conversation.started", "conversation.dialing", "conversation.talking", "conversation.partyadded", "conversation.ended",
        "conversation.disposed"]
    ended = yield call(bridge, consult_id)
    assert (ended["cause"], ended["hangup_by"], ended["consult_of"]) == ("remote_hangup", "remote", call_id)
    assert (yield call(bridge, call_id))["state"] == "TALKING"  # retrieved by back_on_hold
    interaction_ended = bridge.event("interaction.ended", interaction)
    yield bridge.ok("release", target=primary)
    yield interaction_ended
    primary_cdr = yield cdr(bridge, call_id)
    consult_cdr = yield cdr(bridge, consult_id)
    assert (primary_cdr["cause"], primary_cdr["consults"]) == ("normal", [consult_id])
    assert (consult_cdr["cause"], consult_cdr["consult_of"]) == ("remote_hangup", call_id)


@pytest_twisted.inlineCallbacks
def test_a_logout_during_a_consult_then_a_login_names_the_live_consult_only(bridge):
    yield bridge.start()
    call_id, interaction, primary = yield talking(bridge)
    consult_id, consult_target = yield consult(bridge, interaction)
    channel = primary.rsplit(".", 2)[0]

    @defer.inlineCallbacks
    def logout_and_login(wait_between=0.0):
        # nothing in flight: the simulator counts any event arriving after the logout was sent
        yield until(lambda: names(bridge, consult_target)[-1] == "conversation.partyadded")
        yield bridge.ok("logout", target="alice")  # answered once complete; no event after it
        logged = len(bridge.sim.event_log)
        yield deferLater(reactor, wait_between or 0.3, lambda: None)
        assert bridge.sim.event_log[logged:] == []
        yield wait(bridge.sim.login("alice"))
        yield until(lambda: interaction in bridge.sim.destinations
                    and bridge.sim.destinations[interaction].init is not None)
        assert list(bridge.sim.destinations[channel].init.interactions) == [call_id]
        return bridge.sim.destinations[interaction].init

    # the consult is live: the new session's interaction init names it (STARTED)
    init = yield logout_and_login()
    assert (init.state, init.primary, init.consult) == ("STARTED", "primary", consult_id)
    yield until(lambda: consult_target in bridge.sim.destinations
                and bridge.sim.destinations[consult_target].init is not None)
    assert bridge.sim.destinations[consult_target].init.state == "TALKING"
    yield bridge.ok("release", target=consult_target)
    yield back_on_hold(bridge, call_id, interaction, primary, consult_target)

    # the consulted party hangs up while the agent is logged out: a login names no consult
    consult_id, consult_target = yield consult(bridge, interaction, LEAVES)
    init = yield logout_and_login(wait_between=2.5)
    assert (init.state, init.primary, init.consult) == ("STARTED", "primary", None)
    assert (yield call(bridge, consult_id))["cause"] == "remote_hangup"
    assert (yield call(bridge, call_id))["state"] == "HELD"
    retrieved = bridge.event("conversation.talking", primary)
    yield bridge.ok("retrieve", target=primary)
    yield retrieved
    ended = bridge.event("interaction.ended", interaction)
    yield bridge.ok("release", target=primary)
    yield ended
