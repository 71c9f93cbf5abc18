"""Scheduled grid commands in virtual time: each applies exactly in its window, the window opened
last wins, the queue is bounded per kind, cancel reaches active and queued commands, and the
scheduled ones survive a restart (native/schedule.pxi, v2g_rt/schedule.py)."""
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import S, make_site
from v2g_rt import Controller
from v2g_rt.schedule import MAX_SCHEDULED
from v2g_rt.services.schedule import ScheduleService

MS = 1_000_000
EPOCH = 1.8e9


class VirtualWall:
    """The wall clock of a virtual-time controller: epoch + its clock (synchronised unless told)."""

    def __init__(self, offset_s=EPOCH, synced=True):
        self.ctrl, self.offset_s, self.synced = None, offset_s, synced

    def now(self):
        return self.offset_s + self.ctrl.now_ns() / 1e9

    def synchronized(self):
        return self.synced


def controller(wall=None, t0=S):
    wall = wall or VirtualWall()
    c = Controller(make_site(2), clock="virtual", wall=wall)
    wall.ctrl = c
    c.step(t0)
    return c


def setpoint(c, cid, w, **when):
    if not {"expires_ns", "expires_in_s", "expires_at"} & set(when):
        when["expires_in_s"] = 3600
    return c.submit({"kind": "setpoint", "id": cid, "value_w": w, **when})


def active_w(c):
    w = c.snapshot().site["setpoint_w"]
    return None if math.isnan(w) else w


def at(c, t_ns):
    c.step(t_ns)
    return active_w(c)


def test_a_scheduled_setpoint_applies_exactly_in_its_window():
    c = controller()
    assert setpoint(c, "s", 5000.0, starts_ns=3 * S, expires_ns=5 * S)
    assert at(c, 3 * S - 1) is None                  # one ns before its start
    assert at(c, 3 * S) == 5000.0                    # the cycle at its start
    assert at(c, 5 * S - 1) == 5000.0
    assert at(c, 5 * S) is None                      # its expiry ends it, nothing else resumes


def test_an_immediate_command_overrides_until_the_next_scheduled_start_and_keeps_the_queue():
    c = controller()
    assert setpoint(c, "later", -2000.0, starts_in_s=2)
    assert setpoint(c, "now", 1000.0, expires_in_s=60)
    assert at(c, S + MS) == 1000.0
    assert [x["id"] for x in c.scheduled()] == ["now", "later"]
    assert at(c, 3 * S) == -2000.0                   # the later start opens and replaces it
    assert [(x["id"], x["state"]) for x in c.scheduled()] == [("later", "active")]


def test_overlapping_windows_the_one_opened_last_wins_ties_by_submission():
    c = controller()
    assert setpoint(c, "a", 1.0, starts_ns=2 * S, expires_ns=9 * S)
    assert setpoint(c, "b", 2.0, starts_ns=4 * S, expires_ns=5 * S)
    assert setpoint(c, "c", 3.0, starts_ns=6 * S, expires_ns=8 * S)
    assert setpoint(c, "d", 4.0, starts_ns=6 * S, expires_ns=7 * S)
    assert [at(c, t * S) for t in (2, 4, 5, 6, 7)] == [1.0, 2.0, None, 4.0, None]


def test_several_starts_passed_in_one_cycle_the_latest_wins():
    c = controller()
    for k, start in enumerate((2 * S, 2 * S + 300, 2 * S + 200)):
        assert setpoint(c, f"s{k}", float(k), starts_ns=start)
    assert at(c, 3 * S) == 1.0
    assert c.scheduled()[0]["id"] == "s1" and len(c.scheduled()) == 1


def test_a_late_start_earlier_than_the_active_one_is_superseded():
    c = controller()
    assert setpoint(c, "now", 1000.0)
    c.step(2 * S)
    assert setpoint(c, "old", 7.0, starts_ns=S // 2)       # declared to start before "now" opened
    assert at(c, 2 * S + MS) == 1000.0
    assert setpoint(c, "newer", 8.0, starts_ns=2 * S + MS)   # a past start after it: wins
    assert at(c, 2 * S + 2 * MS) == 8.0


def test_cancel_by_kind_reaches_active_and_queued_commands_of_that_kind_only():
    c = controller()
    assert setpoint(c, "a", 1.0)
    assert setpoint(c, "q", 2.0, starts_in_s=5)
    assert c.submit({"kind": "load_shed", "id": "l", "value_w": 0.0, "expires_in_s": 60, "starts_in_s": 5})
    c.step(S + MS)
    assert c.submit({"kind": "cancel", "id": "x", "of": "setpoint", "expires_in_s": 60})
    c.step(S + 2 * MS)
    assert [(x["kind"], x["id"]) for x in c.scheduled()] == [("load_shed", "l")]
    assert at(c, 7 * S) is None


def test_cancel_by_id_ends_one_command_active_or_queued():
    c = controller()
    assert setpoint(c, "a", 1.0)
    assert setpoint(c, "q1", 2.0, starts_in_s=5)
    assert setpoint(c, "q2", 3.0, starts_in_s=6)
    c.step(S + MS)
    assert c.submit({"kind": "cancel", "id": "x1", "of_id": "q1", "expires_in_s": 60})
    c.step(S + 2 * MS)
    assert [x["id"] for x in c.scheduled()] == ["a", "q2"]
    assert c.submit({"kind": "cancel", "id": "x2", "of_id": "a", "expires_in_s": 60})
    assert at(c, S + 3 * MS) is None
    assert [at(c, t * S) for t in (6, 7)] == [None, 3.0]


def test_cancel_by_id_reaches_only_the_senders_own_commands():
    c = controller()
    assert c.submit({"kind": "setpoint", "id": "q", "value_w": 5.0, "expires_in_s": 60, "starts_in_s": 2}, "dms")
    assert c.submit({"kind": "cancel", "id": "x", "of_id": "q", "expires_in_s": 60}, "aggregator")
    assert at(c, 4 * S) == 5.0


def test_the_queue_is_bounded_per_kind_and_a_full_one_is_refused_with_its_code():
    c = controller()
    for k in range(MAX_SCHEDULED):
        assert setpoint(c, f"s{k}", float(k), starts_ns=(10 + k) * S)
    full = setpoint(c, "one-too-many", 1.0, starts_ns=40 * S)
    assert not full and full.code == "ERR_CMD_SCHEDULE_FULL"
    assert c.submit({"kind": "export_limit", "id": "e", "value_w": 1e4, "expires_in_s": 60, "starts_in_s": 3})
    assert setpoint(c, "immediate", 9.0)              # a command without a start takes no slot
    c.step(10 * S)                                    # s0 opens: its slot is free again
    assert setpoint(c, "one-more", 1.0, starts_ns=40 * S)
    c.step(10 * S + MS)
    assert c.snapshot().site["schedule_refused"] == 0


def test_a_day_ahead_plan_of_quarter_hours_fits_and_each_opens_in_its_window():
    c = controller()
    q = 900 * S
    for k in range(96):
        assert setpoint(c, f"d{k}", 1000.0 + k, starts_ns=(k + 1) * q, expires_ns=(k + 2) * q)
    assert len([x for x in c.scheduled() if x["state"] == "pending"]) == 96
    assert active_w(c) is None
    for k in range(96):
        assert at(c, (k + 1) * q) == 1000.0 + k
        assert at(c, (k + 2) * q - MS) == 1000.0 + k
    assert at(c, 97 * q) is None
    assert c.snapshot().site["schedule_refused"] == 0


@pytest.mark.parametrize("cmd, code", [
    ({"kind": "cancel", "of": "setpoint", "starts_in_s": 5}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "reset_fault", "port": 0, "starts_in_s": 5}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "setpoint", "value_w": 1.0, "starts_in_s": 5, "starts_ns": 9 * S}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "setpoint", "value_w": 1.0, "starts_in_s": 3600}, "ERR_CMD_BAD_FIELD"),    # at its expiry
    ({"kind": "setpoint", "value_w": 1.0, "starts_in_s": float("nan")}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "setpoint", "value_w": 1.0, "starts_in_s": 8 * 86400}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "cancel", "of": "setpoint", "of_id": "a"}, "ERR_CMD_BAD_FIELD"),
    ({"kind": "setpoint", "value_w": 1.0, "of_id": "a"}, "ERR_CMD_BAD_FIELD"),
])
def test_bad_starts_and_cancels_are_refused(cmd, code):
    c = controller()
    verdict = c.submit({"id": "x", "expires_in_s": 3600, **cmd})
    assert not verdict and verdict.code == code, verdict


def test_starts_at_needs_a_synchronised_clock():
    c = controller(VirtualWall(synced=False))
    verdict = setpoint(c, "s", 1.0, starts_at=EPOCH + 5)
    assert verdict.code == "ERR_CLOCK_UNSYNCED"


def test_starts_at_is_wall_clock_and_follows_a_clock_step():
    wall = VirtualWall()
    c = controller(wall)
    assert setpoint(c, "s", 1.0, starts_at=EPOCH + 10, expires_at=EPOCH + 20)
    c.check_wall_clock()
    wall.offset_s += 5                                # NTP steps the clock 5 s forward
    assert c.check_wall_clock() == pytest.approx(5)
    assert at(c, 5 * S - MS) is None
    assert at(c, 5 * S) == 1.0                        # wall time 10 is now 5 s of controller clock
    assert at(c, 15 * S - MS) == 1.0
    assert at(c, 15 * S) is None


def test_status_lists_each_held_command_with_its_window():
    c = controller()
    assert setpoint(c, 7, -3000.0, starts_in_s=2, expires_in_s=4)
    c.step(S + MS)
    [row] = c.scheduled()
    assert row == {"kind": "setpoint", "state": "queued", "id": 7, "source": "local", "value_w": -3000.0,
                   "scheduled": True, "starts_ns": 3 * S, "expires_ns": 5 * S, "starts_in_s": pytest.approx(2 - 0.001),
                   "expires_in_s": pytest.approx(4 - 0.001), "starts_at": EPOCH + 3, "expires_at": EPOCH + 5}


def test_scheduled_commands_survive_a_restart(tmp_path):
    path = tmp_path / "scheduled.json"
    c = controller()
    svc = ScheduleService(c, path)
    assert setpoint(c, "gone", 1.0, starts_in_s=1, expires_in_s=2)       # expired by the restart
    assert setpoint(c, "open", 2.0, starts_in_s=2, expires_in_s=100)     # window open at the restart
    assert setpoint(c, "later", 3.0, starts_in_s=50, expires_in_s=60)
    assert setpoint(c, "now", 4.0)                                       # without a start: not kept
    c.step(S + MS)
    assert svc.writes >= 3
    assert [x["id"] for x in json.loads(path.read_text())["commands"]] == ["gone", "open", "later"]
    # the process dies; a new one starts 10 s of wall time later, its clock anew at 1 s
    wall = VirtualWall(offset_s=EPOCH + 10)
    c2 = controller(wall)
    svc2 = ScheduleService(c2, path)
    assert (svc2.restored, svc2.dropped) == (2, 1)
    assert at(c2, S + MS) == 2.0
    assert [(x["id"], x["state"]) for x in c2.scheduled()] == [("open", "active"), ("later", "queued")]
    assert at(c2, 41 * S - MS) == 2.0                # EPOCH + 51 s: "later" opens at controller time 41 s
    assert at(c2, 41 * S) == 3.0
    assert not setpoint(c2, "later", 3.0, starts_in_s=5)                 # its id is still known


def test_a_restart_with_an_unsynchronised_clock_keeps_the_file_until_it_is(tmp_path):
    path = tmp_path / "scheduled.json"
    c = controller()
    ScheduleService(c, path)
    assert setpoint(c, "later", 3.0, starts_in_s=50, expires_in_s=60)
    wall = VirtualWall(synced=False)
    c2 = controller(wall)
    svc2 = ScheduleService(c2, path)
    assert svc2.restored == 0 and svc2.flush()
    assert [x["id"] for x in json.loads(path.read_text())["commands"]] == ["later"]
    wall.synced = True
    svc2.resubmit()
    assert svc2.restored == 1 and c2.scheduled()[0]["id"] == "later"


def test_a_file_that_is_not_ours_is_reported_and_left_alone(tmp_path, caplog):
    path = tmp_path / "scheduled.json"
    path.write_text('{"version": 1, "commands": [{"kind": "setpoint"}]}')
    svc = ScheduleService(controller(), path)
    assert "ERR_SCHEDULE_JOURNAL" in caplog.text and not svc.flush()
    assert path.read_text() == '{"version": 1, "commands": [{"kind": "setpoint"}]}'


# ------------------------------------------------------------------ properties

class Model:
    """The documented rule, written out plainly: the window opened last wins (ties: submission
    order); opening replaces the active command; cancel ends active and queued ones."""

    def __init__(self):
        self.active = None            # (start, seq, value, expiry, id)
        self.queued = []
        self.seq = 0

    def submit(self, t, cid, value, start, expiry):
        self.seq += 1
        if expiry <= t:
            return                    # over when the loop takes it
        entry = (t if start is None else start, self.seq, value, expiry, cid)
        if start is not None and start > t:
            self.queued.append(entry)
        elif self.active is None or entry[:2] > self.active[:2]:
            self.active = entry

    def cancel(self, cid=None):
        if self.active and cid in (None, self.active[4]):
            self.active = None
        self.queued = [q for q in self.queued if cid not in (None, q[4])]

    def step(self, t):
        due = [q for q in self.queued if q[0] <= t]
        self.queued = [q for q in self.queued if q[0] > t]
        live = [q for q in due if q[3] > t]
        if live:
            best = max(live, key=lambda q: q[:2])
            if self.active is None or best[:2] > self.active[:2]:
                self.active = best
        if self.active and self.active[3] <= t:
            self.active = None
        return None if self.active is None else self.active[2]


ops = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(-3, 12), st.integers(1, 10)),   # start, length (in cycles)
    st.tuples(st.just("now"), st.integers(1, 10)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("cancel_kind"),),
    st.tuples(st.just("step"), st.integers(1, 4)),
), min_size=1, max_size=60)


@settings(max_examples=60)
@given(ops)
def test_property_every_cycle_the_active_setpoint_is_the_rules(ops):
    c = controller()
    period = c.site.period_ns
    model, t, n, ids = Model(), S, 0, iter(range(10**6))
    published, pushed = 0, 0          # slots the loop held at the last cycle; slots pushed since
    for op in ops:
        if op[0] in ("submit", "now"):
            n += 1
            start = None if op[0] == "now" else t + op[1] * period
            expiry = (t if start is None else max(start, t)) + op[-1] * period
            when = {"expires_ns": expiry} if start is None else {"starts_ns": start, "expires_ns": expiry}
            verdict = setpoint(c, f"s{n}", float(n), **when)
            if verdict:
                model.submit(t + period, f"s{n}", float(n), start, expiry)   # the loop takes it next cycle
                pushed += start is not None and start > t
            else:
                assert verdict.code == "ERR_CMD_SCHEDULE_FULL"
                assert published + pushed >= MAX_SCHEDULED
        elif op[0] == "cancel" and op[1] <= n:
            assert c.submit({"kind": "cancel", "id": f"c{next(ids)}", "of_id": f"s{op[1]}", "expires_in_s": 1})
            model.cancel(f"s{op[1]}")
        elif op[0] == "cancel_kind":
            assert c.submit({"kind": "cancel", "id": f"k{next(ids)}", "of": "setpoint", "expires_in_s": 1})
            model.cancel()
        elif op[0] == "step":
            for _ in range(op[1]):
                t += period
                c.step(t)
                assert active_w(c) == model.step(t), t
                queued = [x for x in c.scheduled() if x["state"] == "queued"]
                assert len(queued) <= MAX_SCHEDULED
                assert sorted(x["id"] for x in queued) == sorted(q[4] for q in model.queued)
                published, pushed = len(queued), 0
    assert c.snapshot().site["schedule_refused"] == 0


@pytest.mark.parametrize("ahead_s, opens_s", [(0.0, 40.001), (60.0, 36.0)])     # sent at 40 s: taken a cycle on
def test_the_simulated_dms_sends_its_plan_ahead_and_it_opens_on_time(ahead_s, opens_s):
    from v2g_rt.sim.plant import FREE, Plant, PlantConfig

    cfg = PlantConfig(step_s=10.0, start_hour=0.0, setpoint_schedule=((0.0, FREE), (0.01, 50_000.0)),
                      setpoint_ahead_s=ahead_s, setpoint_refresh_s=5.0)
    c = Controller(make_site(2), clock="virtual")
    t0 = S
    c.step(t0)
    plant = Plant(c.site, c, cfg, t0)
    period, opened, t = c.site.period_ns, None, t0
    while opened is None and t < t0 + 60 * S:
        plant.events(t)                               # the DMS acts on the plant's 10 s steps
        for _ in range(10 * S // period):
            t += period
            c.step(t)
            if opened is None and active_w(c) == 50_000.0:
                opened = (t - t0) / S
    assert opened == pytest.approx(opens_s)           # 0.01 h = 36 s: on time only when announced
