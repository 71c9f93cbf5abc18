"""`v2g-rt status` and `explain` for PLC modems: per port link, loss, attenuation, bad MMEs."""
from helpers import plc_site
from v2g_rt import Controller, config, errors
from v2g_rt.services.status import render, report
from v2g_rt.sim.peers import attach

SITE = plc_site(2, extra="attenuation_limit_db = 35\n")


def test_status_shows_each_ports_link_loss_and_attenuation():
    site = config.parse(SITE, "plc-status.toml")
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    m1, m2 = devices.plc_peer.modems["e1.1"], devices.plc_peer.modems["e1.2"]
    m2.link_up = False
    ctrl.step(10**9)
    for k in range(50):
        if k == 30:
            m1.attenuation([40] * 58)
            m1.garbage("type")
        ctrl.run_steps(1, 10**7)
        devices.plc_peer.poll(ctrl.now_ns())
    doc = report(ctrl)
    rows = {m["port"]: m for m in doc["plc"]}
    assert rows["e1.1"]["link_up"] and rows["e1.1"]["attenuation_db"] == 40.0
    assert not rows["e1.2"]["link_up"] and rows["e1.2"]["attenuation_db"] is None     # JSON: no NaN
    lines = {line.split()[0]: line for line in render(doc).split("plc:\n")[1].splitlines() if line.startswith("  e1.")}
    assert "link up" in lines["e1.1"] and "attenuation 40.0 dB  ERR_PLC_ATTENUATION" in lines["e1.1"]
    assert "ERR_PLC_BAD_MME wrong_type 1" in lines["e1.1"]
    assert "link DOWN" in lines["e1.2"] and "attenuation -" in lines["e1.2"]
    devices.close()


def test_explain_names_the_remedies():
    assert "repeater" in errors.lookup("ERR_PLC_ATTENUATION").remedy
    assert "shield" in errors.lookup("ERR_PLC_ATTENUATION").remedy.lower()
    assert "0x88e1" in errors.lookup("ERR_PLC_BAD_MME").remedy



def test_simulate_lets_the_modems_answer_between_plant_steps(tmp_path, monkeypatch):
    """`simulate` polls the far sides faster than a plant step (1 s): every probe is answered in
    time, so a simulated site with [plc] sections and vehicles plugged in loses none."""
    from v2g_rt.sim import drive
    site = config.parse(plc_site(2, period_ms=10) + "[sim]\noccupancy = 1.0\n", "plc-sim.toml")
    seen = {}
    summary = drive.Plant.summary

    def keep_stats(plant):
        seen["plc"], seen["faults"] = plant.ctrl.device_stats()["plc"], plant.ctrl.snapshot().ports["faults"]
        return summary(plant)
    monkeypatch.setattr(drive.Plant, "summary", keep_stats)
    drive.simulate(site, 0.01, tmp_path, plot=False)
    for m in seen["plc"]:
        assert m["probes_sent"] >= 300 and m["lost"] == 0 and m["answers"] >= m["probes_sent"] - 1, m
        assert m["link_up"] and m["loss"] == 0.0
    assert not seen["faults"].any()


def test_modems_are_probed_at_once_then_spread_over_an_interval():
    site = config.parse(plc_site(2), "plc-spread.toml")        # 100 ms probes at a 10 ms period
    ctrl = Controller(site, clock="virtual")
    devices = attach(ctrl, site)
    sent = lambda: [m["probes_sent"] for m in ctrl.device_stats()["plc"]]   # noqa: E731
    ctrl.step(10**9)
    assert sent() == [1, 1]                                       # the first ones at once
    ctrl.run_steps(10, 10**7)
    assert sent() == [2, 1]
    ctrl.run_steps(4, 10**7)
    assert sent() == [2, 1]
    ctrl.run_steps(1, 10**7)                                      # half an interval later
    assert sent() == [2, 2]
    devices.close()
