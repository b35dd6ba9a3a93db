#!/usr/bin/env python3
"""Restore drill (issue 12) on the deployed lab, accounted by request id through the gateway.

  rows A -> playbooks/backup.yml (full backup + the runbook's two artefacts) -> rows B -> target
  time T -> rows C (RPO sample: seconds until the WAL segment holding C is archived) ->
  the PostgreSQL container is REMOVED (data gone) and recreated bare from its own image ->
  playbooks/restore.yml -e restore_provision=true -e restore_target_time=T: the rows of A, B, C
  in requests are exactly A + B; RTO = container removed -> a new request logged again ->
  data directory deleted, rows D sent while the database is gone (the gateway answers, spools)
  -> playbooks/restore.yml -e restore_target_timeline=current (the end of the archive of the
  backup's timeline): A + B + C + D, each once (D from the gateways' spools).

Also checked on the way: the artefacts of backup.yml are 0600 root files with a SHA256SUMS that
matches, and neither they nor the repository hold a lab secret or a request id in clear; a
teardown without confirmation changes nothing. Writes results/restore-<time>.md/.json; exits 1
when a check fails. Run it through scripts/lab-restore-drill (route check, lock, lab restored).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import labctl as lab
import report

BACKUP_HOST = "hx-backup-server"
REPO_USER = "pgbackrest"
ARTEFACTS = "/var/lib/pgbackrest/artefacts"
PG_DATA = "/var/lib/postgresql/17/main"
BATCH = 20  # requests per row set (A, B, C, D)
ARCHIVE_WAIT_SECONDS = 300  # production's archive_timeout is 60 s, the lab's 15 s


@dataclass
class Drill:
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    log: str = ""

    def check(self, name: str, ok: bool, detail: object = "") -> None:
        self.checks[name] = bool(ok)
        print(f"  {'ok    ' if ok else 'FAILED'} {name}{'' if ok else f' ({detail})'}", flush=True)

    def playbook(self, path: str, *extra: str, expect_ok: bool = True) -> tuple[int, float, str]:
        """ansible-playbook against the lab's inventory; (rc, seconds, output); output kept in the log."""
        started = time.monotonic()
        result = subprocess.run(
            [*lab.PLAYBOOK_ARGV, path, *extra],
            cwd=lab.REPO, env=lab.ansible_env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        output = result.stdout + result.stderr
        with open(self.log, "a") as out:
            out.write(f"\n### {path} {' '.join(extra)} (rc {result.returncode}, {seconds:.1f} s)\n{output}")
        if expect_ok and result.returncode != 0:
            raise lab.LabError(f"{path} failed (rc {result.returncode}); see {self.log}")
        return result.returncode, seconds, output


def send(count: int) -> dict[str, int]:
    """``count`` runbook chat requests with TEST_KEY, one after the other: {request id: status}."""
    headers = {"Authorization": f"Bearer {lab.test_key()}"}
    answers = {}
    with httpx.Client(base_url=lab.GATEWAY_URL, headers=headers, verify=lab.TLS_VERIFY, timeout=30) as client:
        for _ in range(count):
            answer = client.post(lab.CHAT_PATH, json=lab.chat_payload())
            answers[answer.headers["x-litellm-call-id"]] = answer.status_code
    return answers


def exact(counts: dict[str, int]) -> bool:
    """Every answered request has exactly one row, with the status its client received."""
    return counts["lost"] == 0 and counts["duplicated"] == 0 and counts["status_mismatch"] == 0


def logged(answers: dict[str, int], timeout: float = 120) -> bool:
    return exact(lab.wait_for_rows(answers, timeout=timeout))


def recreate_bare(container: str) -> None:
    """Remove the container (and its data) and start a new one from the same image and recipe.

    The recipe is read from the container itself (docker inspect), so this follows
    molecule/default/molecule.yml without repeating it.
    """
    spec = json.loads(
        subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    )[0]
    config, host = spec["Config"], spec["HostConfig"]
    network, endpoint = next(iter(spec["NetworkSettings"]["Networks"].items()))
    argv = ["docker", "run", "-d", "--name", container, "--hostname", config["Hostname"]]
    argv += ["--network", network, "--ip", endpoint["IPAMConfig"]["IPv4Address"]]
    argv += [f"--cap-add={cap}" for cap in host.get("CapAdd") or []]
    argv += [f"--security-opt={opt}" for opt in host.get("SecurityOpt") or []]
    argv += [f"--tmpfs={path}" for path in host.get("Tmpfs") or {}]
    argv += [f"--volume={bind}" for bind in host.get("Binds") or []]
    argv += [f"--label={key}={value}" for key, value in (config.get("Labels") or {}).items()]
    argv += [
        "--cgroupns",
        host.get("CgroupnsMode") or "private",
        "--stop-signal",
        config.get("StopSignal") or "SIGTERM",
    ]
    argv += ["--entrypoint", (config.get("Entrypoint") or [""])[0]] if config.get("Entrypoint") else []
    argv += [config["Image"], *(config.get("Cmd") or [])]
    subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=True)
    subprocess.run(argv, capture_output=True, check=True)


def wait_logging(timeout: float = 180) -> float:
    """Send one request at a time until one is answered 200 and logged; returns when it was logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answers = send(1)
            if set(answers.values()) == {200} and lab.account(answers)["lost"] == 0:
                return time.time()
        except (httpx.HTTPError, lab.LabError):
            pass
        time.sleep(1)
    raise lab.LabError("the gateway did not log a request after the restore")


def repo_exec(*argv: str) -> str:
    return lab.docker_exec(BACKUP_HOST, ["runuser", "-u", REPO_USER, "--", *argv], timeout=300)


def check_artefacts(drill: Drill, secrets: list[str], ids: list[str]) -> None:
    """Modes, checksums and no clear text in the newest artefacts and in the repository."""
    newest = lab.docker_exec(BACKUP_HOST, ["sh", "-c", f"ls -1d {ARTEFACTS}/*/ | tail -1"]).strip()
    listing = lab.docker_exec(BACKUP_HOST, ["stat", "-c", "%a %U %n", *lab.docker_exec(
        BACKUP_HOST, ["sh", "-c", f"ls -1 {newest}*"]).split()])  # fmt: skip
    modes = [line.split()[:2] for line in listing.splitlines()]
    drill.check("artefacts are 0600 root files", modes and all(m == ["600", "root"] for m in modes), listing)
    sums = lab.docker_exec(
        BACKUP_HOST, ["sh", "-c", f"cd {newest} && sha256sum --check --quiet SHA256SUMS && echo OK"]
    )
    drill.check("artefact checksums match SHA256SUMS", sums.strip().endswith("OK"), sums)
    # fgrep over the artefacts and the whole repository (backups and WAL): no secret, no request id.
    needles = "\n".join([*secrets, *ids[:5]]) + "\n"
    found = lab.docker_exec(
        BACKUP_HOST, ["sh", "-c", "grep -rlaF -f /dev/stdin /var/lib/pgbackrest || true"], stdin=needles
    )
    drill.check(
        "no secret or request id in clear in the artefacts or the repository", not found.strip(), found
    )
    drill.figures["artefacts"] = listing.replace("\n", "; ")


def run(drill: Drill) -> None:
    a = send(BATCH)
    drill.check("rows A logged", logged(a))

    _, seconds, _ = drill.playbook("playbooks/backup.yml")
    info = json.loads(repo_exec("pgbackrest", "--stanza=main", "--output=json", "info"))[0]
    newest = info["backup"][-1]
    drill.figures |= {
        "backup.yml seconds (backup + dump + config archive)": round(seconds, 1),
        "newest backup": f"{newest['type']} {newest['label']}",
        "backup seconds (pgBackRest)": newest["timestamp"]["stop"] - newest["timestamp"]["start"],
        "database size MB": round(newest["info"]["size"] / 2**20, 1),
        "backup size in the repository MB": round(newest["info"]["repository"]["delta"] / 2**20, 2),
        "repository cipher": info["cipher"],
    }
    drill.check("repository encrypted (aes-256-cbc)", info["cipher"] == "aes-256-cbc", info["cipher"])
    secrets = [
        lab.lab_key(name) for name in ("db_password", "master_key", "test_key", "pgbackrest_cipher_pass")
    ]
    check_artefacts(drill, secrets, list(a))

    b = send(BATCH)
    drill.check("rows B logged", logged(b))
    target = lab.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    )
    time.sleep(1)
    c = send(BATCH)
    drill.check("rows C logged", logged(c))
    segment, committed = lab.psql(
        "SELECT pg_walfile_name(pg_current_wal_insert_lsn()), extract(epoch FROM clock_timestamp())"
    ).split("|")
    # archive_timeout bounds this wait; far beyond it, archiving is broken.
    deadline = time.monotonic() + ARCHIVE_WAIT_SECONDS
    while lab.psql(f"SELECT coalesce(last_archived_wal, '') >= '{segment}' FROM pg_stat_archiver") != "t":
        if time.monotonic() > deadline:
            raise lab.LabError(f"WAL segment {segment} not archived after {ARCHIVE_WAIT_SECONDS} s")
        time.sleep(0.5)
    drill.figures["RPO sample s (rows C committed -> their WAL archived)"] = round(
        time.time() - float(committed), 1
    )

    print("  removing the PostgreSQL container (data gone), recreating it bare", flush=True)
    removed = time.time()
    recreate_bare(lab.POSTGRES_HOST)
    drill.playbook("molecule/default/prepare.yml", "--limit", lab.POSTGRES_HOST)
    _, seconds, output = drill.playbook(
        "playbooks/restore.yml", "-e", "restore_provision=true", "-e", f"restore_target_time='{target}'"
    )
    back = wait_logging()
    drill.figures |= {
        "target time T": target,
        "restore.yml to T onto the bare host s (provision + restore + gateways)": round(seconds, 1),
        "RTO s (container removed -> gateway logging again)": round(back - removed, 1),
    }
    sent = a | b | c
    found = lab.found_ids(sent)
    drill.check("restore to T: exactly A + B", found == set(a) | set(b), f"{len(found)} found")
    drill.figures["rows after restore to T (A+B+C sent)"] = f"{len(found)} of {len(sent)}"

    print("  deleting the data directory; rows D while the database is gone", flush=True)
    lab.postgres("stop")
    lab.docker_exec(lab.POSTGRES_HOST, ["rm", "-rf", PG_DATA])
    d = send(BATCH)
    drill.check("rows D answered 200 while the database was gone", set(d.values()) == {200}, d)
    _, seconds, _ = drill.playbook("playbooks/restore.yml", "-e", "restore_target_timeline=current")
    drill.figures["restore.yml to latest s"] = round(seconds, 1)
    everything = sent | d
    counts = lab.wait_for_rows(everything)
    drill.check("restore to latest: A + B + C, and D from the spools, each once", exact(counts), counts)
    drill.figures["rows after restore to latest"] = (
        f"{counts['found']} of {len(everything)} (dup {counts['duplicated']})"
    )

    rc, _, output = drill.playbook("playbooks/teardown.yml", expect_ok=False)
    drill.check(
        "teardown without confirmation refuses and changes nothing",
        rc != 0 and "Nothing was changed" in output and "changed=1" not in output,
        rc,
    )


def main() -> None:
    lab.require_deployed_lab()
    stamp = report.stamp()
    drill = Drill(log=str(lab.RESULTS / f"restore-{stamp}.log"))
    lab.RESULTS.mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        run(drill)
    except (lab.LabError, httpx.HTTPError, subprocess.CalledProcessError, KeyError) as exc:
        drill.check("drill ran to the end", False, exc)
    drill.figures["drill seconds"] = round(time.monotonic() - started)
    markdown = "\n\n".join(
        [
            "# Restore drill",
            f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {lab.machine_description()};"
            f" {BATCH} requests per row set through {lab.GATEWAY_URL}."
            f" Playbook output: {os.path.basename(drill.log)}.",
            report.table(["figure", "value"], [[k, v] for k, v in drill.figures.items()]),
            report.table(
                ["check", "result"], [[k, "ok" if v else "FAILED"] for k, v in drill.checks.items()]
            ),
        ]
    )
    (lab.RESULTS / f"restore-{stamp}.md").write_text(markdown + "\n")
    (lab.RESULTS / f"restore-{stamp}.json").write_text(json.dumps(vars(drill), indent=2, default=str) + "\n")
    print("\n" + markdown)
    sys.exit(0 if all(drill.checks.values()) else 1)


if __name__ == "__main__":
    main()
