"""The deployment files in hw/ are valid for the tools that read them."""
import shutil
import subprocess
import sys
from pathlib import Path


def test_systemd_unit_verifies(tmp_path, repo_root):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing (apt-get install systemd)"
    cli = Path(sys.executable).with_name("v2g-rt")
    assert cli.exists(), cli
    unit = (repo_root / "hw/systemd/v2g-rt.service").read_text().replace("/usr/local/bin/v2g-rt", str(cli))
    path = tmp_path / "v2g-rt.service"
    path.write_text(unit)
    out = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    problems = [line for line in out.stderr.splitlines() if "v2g-rt.service" in line]
    assert out.returncode == 0 and not problems, out.stderr
    for key in ("CPUSchedulingPolicy=", "LimitRTPRIO=80", "LimitMEMLOCK=infinity", "CPUAffinity=",
                "WatchdogSec=", "ExecStopPost=", "Type=notify"):
        assert key in unit


def test_safe_outputs_names_what_it_does(repo_root):
    out = subprocess.run([sys.executable, "-P", "-m", "v2g_rt.cli", "safe-outputs"], capture_output=True, text=True)
    assert out.returncode == 0 and "24 EVSEs on link 'sim'" in out.stdout
    assert "1 EVSEs on link 'can': 2 ports: no physical bus (backend sim)" in out.stdout
