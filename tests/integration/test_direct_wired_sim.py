"""The packaged direct-wired site simulated end to end in virtual time: the plant's vehicles plug
into each pilot through the SPI ADC's CP input, close S2 when the pwmchip offers a current and draw
what its duty offers; the pilots never go stale between plant steps."""
from importlib import resources

from v2g_rt import config
from v2g_rt.sim.drive import simulate


def test_vehicles_charge_through_the_pilots_and_no_pilot_faults(tmp_path):
    path = resources.files("v2g_rt") / "data" / "examples" / "direct-wired.toml"
    site = config.load(str(path))
    books = simulate(site, 2 / 60, tmp_path, plot=False)
    assert books["arrivals"] >= 1
    assert books["energy_charged_kwh"] > 0.0                 # only through a duty the chip drove
    assert books["ports_with_faults"] == {}                  # no FAULT_PILOT: the CP sampled every 10 ms
    assert books["limit_violations"] == 0
