"""Energy of a task from its record: the formula on its recorded compute seconds, FLOPs, bytes and waiting time;
the totals of a round; the shipped profiles' power figures."""

import math
from dataclasses import replace

import pytest

from msfusion_ray.devices.energy import stamp_energy, task_energy
from msfusion_ray.devices.profile import DeviceProfile, load_profiles
from msfusion_ray.records import ParticipantRoundRow, RoundRow

PHONE = DeviceProfile(name="p", description="", memory_mib=1, train_gflops=1, uplink_mbps=1, downlink_mbps=1,
                      compute_power_w=3.0, radio_tx_w=1.2, radio_rx_w=1.1, tx_j_per_mb=3.5, rx_j_per_mb=0.4,
                      idle_power_w=0.5)


def _row(status="ok", **values) -> ParticipantRoundRow:
    base = dict(flops=4_000_000_000, bytes_down=2_000_000, bytes_up=1_000_000, device_compute_s=2.0,
                device_download_s=0.5, device_upload_s=0.25, device_comm_s=0.5 + 0.25 + 0.04, device_wait_s=3.0)
    return ParticipantRoundRow(run_id="r", round=1, participant=0, device="p", host=0, status=status,
                               **{**base, **values})


def test_a_tasks_energy_is_the_formula_on_its_recorded_work():
    compute, communication, idle = task_energy(PHONE, _row())
    assert compute == pytest.approx(3.0 * 2.0)
    assert communication == pytest.approx(1.2 * 0.25 + 1.1 * (0.5 + 0.04) + 3.5 * 1.0 + 0.4 * 2.0)
    assert idle == pytest.approx(0.5 * 3.0)
    per_flop = replace(PHONE, compute_power_w=None, compute_j_per_gflop=0.25)
    assert task_energy(per_flop, _row())[0] == pytest.approx(0.25 * 4.0)
    both = replace(PHONE, compute_j_per_gflop=0.25)
    assert task_energy(both, _row())[0] == pytest.approx(6.0 + 1.0)


def test_missing_figures_leave_their_part_unknown_and_an_absent_device_spent_nothing():
    bare = DeviceProfile(name="b", description="", memory_mib=1, train_gflops=1, uplink_mbps=1, downlink_mbps=1)
    assert all(math.isnan(part) for part in task_energy(bare, _row()))
    radio_only = replace(bare, tx_j_per_mb=2.0)
    assert task_energy(radio_only, _row())[1] == pytest.approx(2.0)  # the other radio figures count 0
    assert task_energy(PHONE, _row("unavailable")) == (0.0, 0.0, 0.0)
    refused = _row("oom", flops=0, bytes_down=0, bytes_up=0, device_compute_s=0.0, device_download_s=0.0,
                   device_upload_s=0.0, device_comm_s=0.04, device_wait_s=0.0)
    assert task_energy(PHONE, refused) == (0.0, pytest.approx(1.1 * 0.04), 0.0)  # it only answered


def test_rows_are_stamped_and_rounds_total_them():
    rows = [_row(), replace(_row(), participant=1, device_wait_s=0.0), _row("unavailable")]
    stamp_energy(rows, lambda role, index: PHONE)
    assert rows[0].energy_j == pytest.approx(rows[0].energy_compute_j + rows[0].energy_comm_j + 1.5)
    assert rows[1].energy_idle_j == 0.0 and rows[2].energy_j == 0.0
    total = RoundRow.summarise("r", 1, "fedavg", rows)
    assert total.energy_j_total == pytest.approx(rows[0].energy_j + rows[1].energy_j)
    assert total.energy_idle_j_total == pytest.approx(1.5)


def test_every_shipped_profile_has_its_power_figures():
    for profile in load_profiles().values():
        assert profile.compute_power_w is not None and profile.idle_power_w is not None, profile.name
        assert profile.radio_tx_w is not None or profile.tx_j_per_mb is not None, profile.name
