"""Durability: SIGKILL control during a storm of CreateKeyPair / CreateSecurityGroup calls,
restart it on the same data dir; every acknowledged resource is there."""

from __future__ import annotations

import threading

import botocore.exceptions
import urllib3.exceptions

from controltest import create_user, ec2_client, start_control


def test_kill_during_create_storm_keeps_every_acknowledged_resource(tmp_path):
    data = tmp_path / "data"
    keys = create_user(data, "storm", "sam")
    server = start_control(data)
    acked_keys: list[str] = []
    acked_groups: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int) -> None:
        client = ec2_client(server.url, keys, connect_timeout=2, read_timeout=5)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 2:
                    client.create_key_pair(KeyName=f"k-{n}-{i}")
                    with lock:
                        acked_keys.append(f"k-{n}-{i}")
                else:
                    gid = client.create_security_group(GroupName=f"g-{n}-{i}", Description="storm")["GroupId"]
                    with lock:
                        acked_groups.append((f"g-{n}-{i}", gid))
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                    urllib3.exceptions.HTTPError, OSError):
                if stop.is_set() or server.process.poll() is not None:
                    return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    while len(acked_keys) + len(acked_groups) < 60:
        stop.wait(0.05)
    server.kill()  # SIGKILL mid-storm
    stop.set()
    for t in threads:
        t.join(30)
    assert acked_keys and acked_groups

    restarted = start_control(data)
    try:
        client = ec2_client(restarted.url, keys)
        names = {k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]}
        assert set(acked_keys) <= names
        groups = {g["GroupName"]: g["GroupId"] for g in client.describe_security_groups()["SecurityGroups"]}
        for name, gid in acked_groups:
            assert groups.get(name) == gid
        client.create_key_pair(KeyName="after-restart")  # and it keeps working
    finally:
        restarted.stop()
