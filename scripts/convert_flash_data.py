"""Convert the FLASH project's phone list and bandwidth distribution into the CSV files under
device_profiles/sources/ (run once; the CSVs are committed with their license and source).

    python scripts/convert_flash_data.py /path/to/FLASH-git-dir [commit]

Reads, with `git show`, models/utils/device_util/raw_ai_benchmark_list.json (333 phones: model, SoC, RAM, year and
their AI-Benchmark scores) and models/speed_distri.json (19 users' mean and standard deviation of download and
upload speed, in KiB/s: FLASH's models/device.py divides a byte count by 1024 and by these figures to get seconds).
Values are copied as they are (RAM without its unit); nothing is filtered out.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "device_profiles" / "sources"


def show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", git_dir, "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def main(git_dir: str, commit: str = "HEAD") -> None:
    phones = json.loads(show(git_dir, commit, "models/utils/device_util/raw_ai_benchmark_list.json"))
    with open(OUT / "phones.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["model", "soc", "ram_gb", "year", "cpu_f_ai_score", "cpu_q_ai_score", "ai_score"])
        for phone in phones:
            writer.writerow([phone["Model"], phone["CPU"], phone["RAM"].removesuffix("GB"), phone["Year"],
                             phone["CPU_F_AI_Score"], phone["CPU_Q_AI_Score"], phone["AI_Score"].split()[0]])
    speeds = json.loads(show(git_dir, commit, "models/speed_distri.json"))
    with open(OUT / "network.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user", "down_kib_s", "down_sigma_kib_s", "up_kib_s", "up_sigma_kib_s"])
        for user, speed in speeds.items():
            writer.writerow([user, speed["down_u"], speed["down_sigma"], speed["up_u"], speed["up_sigma"]])
    (OUT / "FLASH-LICENSE.md").write_text(show(git_dir, commit, "LICENSE.md"))


if __name__ == "__main__":
    main(*sys.argv[1:])
