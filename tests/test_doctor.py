"""`gptlab doctor`: every check reports, the exit code follows failures and --need, JSON has every field."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab import doctor
from gptlab.cli import main


def test_doctor_json_has_every_check_and_field(capsys):
    assert main(["doctor", "--fast", "--json", "--skip", "ddp"]) == 0
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == list(doctor.CHECKS)
    assert all(c["status"] in ("ok", "unavailable", "failed") and c["detail"] for c in checks.values())
    cpu = checks["cpu"]["values"]
    assert cpu["cores"] >= 1 and {"avx2", "avx512", "avx512_bf16", "amx", "torch_capability"} <= set(cpu)
    peaks = checks["peaks"]["values"]
    assert peaks["fp32_flops"] > 0 and peaks["bf16_flops"] > 0 and peaks["read_bytes_per_s"] > 0
    assert str(checks["threads"]["values"]["best"]) in checks["threads"]["values"]["steps_per_s"]
    assert checks["int_kernels"]["values"]["native"] in (True, False)
    assert checks["gpu"]["values"]["cuda"] == torch.cuda.is_available()
    assert checks["ddp"]["detail"] == "skipped (--skip)"


def test_two_process_data_parallel_smoke_test():
    check = doctor.check_ddp()
    assert check.status == "ok", check.detail


def test_a_failing_check_and_an_unmet_need_exit_1(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    check = doctor.check_compile(doctor.Sizes())
    assert check.status == "failed" and "no C++ compiler found" in check.detail
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--fast", "--skip", "ddp,peaks,threads", "--need", "compile"])
    assert e.value.code == 1 and "needed but not working: compile" in capsys.readouterr().out
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["doctor", "--fast", "--skip", "ddp,peaks,threads", "--need", "gpu"])


def test_an_unknown_check_name_is_a_one_line_error(capsys):
    assert main(["doctor", "--skip", "warp-drive"]) == 2
    err = capsys.readouterr().err
    assert "unknown check warp-drive" in err and len(err.strip().splitlines()) == 1
