"""The console's parts without a server: scrypt passwords and the strength rule, signed
sessions, throttling on a fake clock, and account requests on a real control store."""

from __future__ import annotations

import os
import stat

import pytest

from control import identity as ids
from control.console import passwords, requests, sessions
from control.console.throttle import Throttle
from control.store import ControlStore
from eucalypt.clock import FakeClock


def test_scrypt_hash_verifies_only_the_password():
    encoded = passwords.hash_password("Blue-gum-forest-7")
    scheme, log2_n, r, p, salt, key = encoded.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", "15", "8", "1")
    assert passwords.verify_password("Blue-gum-forest-7", encoded)
    assert not passwords.verify_password("blue-gum-forest-7", encoded)
    assert not passwords.verify_password("anything", None)  # unknown user: no match, same cost
    assert not passwords.verify_password("Blue-gum-forest-7", "md5$abc")
    assert passwords.hash_password("Blue-gum-forest-7") != encoded  # salted


@pytest.mark.parametrize("password, why", [
    ("short1A", "at least 10"), ("x" * 300, "at most"), ("alllowercaseletters", "two kinds"),
    ("Password123", "too easy"), ("ababababAB", "too easy"), ("acme-Secret-99", "account or user name"),
])
def test_weak_passwords_are_refused(password, why):
    with pytest.raises(passwords.WeakPassword, match=why):
        passwords.check_strength(password, names=("acme", "ann"))


def test_a_good_password_passes():
    passwords.check_strength("Correct-horse-battery", names=("acme", "ann"))


def test_session_cookie_is_signed_and_expires(tmp_path):
    key = sessions.load_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / sessions.KEY_FILE).st_mode) == 0o600
    assert sessions.load_key(tmp_path) == key  # kept across restarts
    codec = sessions.SessionCodec(key)
    session = sessions.logged_in(1000.0, "123456789012", "ann", "tag")
    value = codec.encode(session)
    assert codec.decode(value, now=1001.0) == session
    assert codec.decode(value, now=1000.0 + sessions.MAX_AGE) is None
    payload, mac = value.split(".")
    assert codec.decode(payload + "." + mac[:-2] + "AA", now=1001.0) is None
    other = sessions.SessionCodec(os.urandom(32))
    assert other.decode(value, now=1001.0) is None
    assert codec.decode("garbage", now=1001.0) is None and codec.decode(None, now=1.0) is None
    assert sessions.csrf_matches(session, session.csrf)
    assert not sessions.csrf_matches(session, "") and not sessions.csrf_matches(session, None)
    assert sessions.logged_in(1000.0, "1", "ann", "tag").csrf != session.csrf


def test_throttle_locks_after_the_limit_and_lets_go_after_the_window():
    clock = FakeClock()
    throttle = Throttle(clock, limit=3, window=60.0)
    for _ in range(3):
        assert throttle.retry_after("k") == 0
        throttle.failed("k")
    assert throttle.retry_after("k") == pytest.approx(60.0)
    assert throttle.retry_after("other") == 0
    clock.advance(30)
    assert throttle.retry_after("k") == pytest.approx(30.0)
    clock.advance(30)
    assert throttle.retry_after("k") == 0
    throttle.failed("k")
    throttle.succeeded("k")
    assert throttle.retry_after("k") == 0


@pytest.fixture
def store(tmp_path):
    store = ControlStore(tmp_path / "state")
    store.write_sync(lambda txn: ids.ensure_admin(txn, now=1.0))
    yield store
    store.close()


def test_requests_pending_has_nothing_approval_creates_all(store):
    digest = passwords.hash_password("Correct-horse-battery")
    rec = store.write_sync(lambda t: requests.submit(t, "acme", "ann", "ann@example.com", digest, now=10.0))
    assert rec["state"] == "pending" and "password_hash" not in rec
    with store.read() as txn:
        assert requests.name_taken(txn, "acme")
        with pytest.raises(ids.NotFound):
            ids.account_by_name(txn, "acme")
    with pytest.raises(requests.RequestError, match="already taken"):
        store.write_sync(lambda t: requests.submit(t, "acme", "bob", "b@example.com", digest, now=11.0))
    with pytest.raises(requests.RequestError, match="already taken"):
        store.write_sync(lambda t: requests.submit(t, "eucalyptus", "bob", "b@example.com", digest, now=11.0))
    for account, user, email, why in (("A", "ann", "a@example.com", "account name"),
                                      ("ok-name", "bad/name", "a@example.com", "user name"),
                                      ("ok-name", "ann", "not-an-email", "email")):
        with pytest.raises(requests.RequestError, match=why):
            store.write_sync(lambda t: requests.submit(t, account, user, email, digest, now=12.0))

    done = store.write_sync(lambda t: requests.approve(t, rec["id"], now=20.0, decided_by="eucalyptus/admin"))
    assert done["state"] == "approved" and done["decided_by"] == "eucalyptus/admin"
    with store.read() as txn:
        account = ids.account_by_name(txn, "acme")
        user = ids.get_user(txn, account.id, "ann")
        assert len(user.access_keys) == 1 and account.email == "ann@example.com"
        assert passwords.get_hash(txn, account.id, "ann") == digest
        assert requests.latest_for(txn, "acme", "ann")[1] is None  # the hash moved, not copied
    with pytest.raises(requests.RequestError, match="already approved"):
        store.write_sync(lambda t: requests.approve(t, rec["id"], now=21.0, decided_by="cli"))


def test_rejection_creates_nothing_and_frees_the_name(store):
    digest = passwords.hash_password("Correct-horse-battery")
    rec = store.write_sync(lambda t: requests.submit(t, "beta", "bob", "bob@example.com", digest, now=10.0))
    with pytest.raises(requests.RequestError, match="reason"):
        store.write_sync(lambda t: requests.reject(t, rec["id"], " ", now=11.0, decided_by="cli"))
    done = store.write_sync(lambda t: requests.reject(t, rec["id"], "not known", now=11.0, decided_by="cli"))
    assert done["state"] == "rejected" and done["reason"] == "not known"
    with store.read() as txn:
        assert not requests.name_taken(txn, "beta")
        assert [a.name for a in ids.list_accounts(txn)] == ["eucalyptus"]
        assert ids.list_users(txn) and all(u.name == "admin" for u in ids.list_users(txn))
        assert requests.list_requests(txn, "pending") == []
    with pytest.raises(requests.RequestError, match="no request"):
        with store.read() as txn:
            requests.get(txn, "req-0000000000000000")
    with pytest.raises(requests.RequestError, match="not a request id"):
        with store.read() as txn:
            requests.get(txn, "../etc")
