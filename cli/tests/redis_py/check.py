"""redis-py against Felix's Redis door: every command the door serves, as a
Redis library user calls it. Run by cli/tests/redis.rs with the venv that
.ci/run makes; exits non-zero (an AssertionError) on the first difference.

usage: check.py single HOST PORT TOKEN
       check.py tls HOST PORT CA_PEM
       check.py cluster HOST:PORT [HOST:PORT ...]
"""
import sys
import time

import redis
from redis.cluster import ClusterNode, RedisCluster


def expect_error(fn, *words):
    try:
        fn()
    except redis.RedisError as e:
        text = str(e)
        assert all(w in text for w in words), f"error {text!r} lacks {words}"
        return
    raise AssertionError(f"no error; wanted one with {words}")


def strings(r):
    assert r.ping() is True
    assert r.set("s:k", "v") is True
    assert r.get("s:k") == b"v"
    assert r.get("s:absent") is None
    assert r.set("s:k", "other", nx=True) is None
    assert r.set("s:absent", "x", xx=True) is None
    assert r.exists("s:absent") == 0
    assert r.set("s:k", "v2", xx=True, get=True) == b"v"
    assert r.setnx("s:nx", "1") is True and r.setnx("s:nx", "2") is False
    assert r.getset("s:nx", "3") == b"1"
    assert r.getdel("s:nx") == b"3" and r.get("s:nx") is None
    assert r.mset({"s:a": "1", "s:b": "2"}) is True
    assert r.mget(["s:a", "s:b", "s:none"]) == [b"1", b"2", None]
    assert r.append("s:a", "23") == 3 and r.get("s:a") == b"123"
    assert r.strlen("s:a") == 3 and r.strlen("s:none") == 0
    assert r.type("s:a") == b"string" and r.type("s:none") == b"none"
    assert r.delete("s:a", "s:b", "s:none") == 2
    assert r.unlink("s:k") == 1
    assert r.exists("s:a", "s:b", "s:k") == 0


def counters(r):
    assert r.incr("c:n") == 1
    assert r.incrby("c:n", 9) == 10
    assert r.decr("c:n") == 9
    assert r.decrby("c:n", 4) == 5
    assert abs(r.incrbyfloat("c:f", 1.5) - 1.5) < 1e-9
    assert r.get("c:f") == b"1.5"
    r.set("c:text", "abc")
    expect_error(lambda: r.incr("c:text"), "not an integer")


def expiry(r):
    assert r.set("e:k", "v", ex=100) is True
    assert 95 <= r.ttl("e:k") <= 100
    assert r.set("e:k", "w") is True
    assert r.ttl("e:k") == -1, "a plain SET clears the TTL"
    assert r.ttl("e:none") == -2 and r.pttl("e:none") == -2
    assert r.expire("e:k", 50, xx=True) is False, "XX: the key has no expiry"
    assert r.expire("e:k", 50, nx=True) is True
    assert r.expire("e:k", 10, gt=True) is False
    assert r.expire("e:k", 10, lt=True) is True
    assert 0 < r.pttl("e:k") <= 10_000
    assert r.persist("e:k") is True and r.ttl("e:k") == -1
    assert r.set("e:k", "w", ex=5, keepttl=False) is True
    assert r.set("e:k", "x", keepttl=True) is True and r.ttl("e:k") > 0
    assert r.getex("e:k", persist=True) == b"x" and r.ttl("e:k") == -1
    assert r.setex("e:short", 1, "v") is True
    assert r.psetex("e:shorter", 200, "v") is True
    assert r.pexpireat("e:k", int(time.time() * 1000) + 300) is True
    time.sleep(1.2)
    for k in ("e:short", "e:shorter", "e:k"):
        assert r.get(k) is None, f"{k} expired"
        assert r.ttl(k) == -2


def pipelines(r):
    p = r.pipeline(transaction=False)
    for _ in range(1000):
        p.incr("p:n")
    got = p.execute()
    assert got == list(range(1, 1001)), got[:5]
    assert r.get("p:n") == b"1000"


def felix_extras(r):
    assert r.execute_command("FELIX.VERSION", "x:k") is None
    v = r.execute_command("FELIX.CAS", "x:k", 0, "first")
    assert isinstance(v, int) and v > 0
    assert r.execute_command("FELIX.CAS", "x:k", 0, "again") is None
    assert r.execute_command("FELIX.VERSION", "x:k") == v
    w = r.execute_command("FELIX.CAS", "x:k", v, "second")
    assert w > v and r.get("x:k") == b"second"


def server(r):
    info = r.info()
    assert info["redis_version"] == "7.2.0", info
    assert info["arch_bits"] == 64
    assert r.config_get("appendonly") == {"appendonly": "no"}
    assert r.client_setname("checker") is True and r.client_getname() in ("checker", b"checker")
    assert r.echo("hi") == b"hi"
    expect_error(lambda: r.execute_command("NOSUCHCOMMAND", "a"), "unknown command")
    expect_error(lambda: r.execute_command("GET"), "wrong number of arguments")
    expect_error(lambda: r.flushall(), "FLUSHDB")


def keyspace(r):
    """SCAN, KEYS, DBSIZE and FLUSHDB over a cache spread over shards."""
    assert r.flushdb() is True and r.dbsize() == 0
    p = r.pipeline(transaction=False)
    for i in range(250):
        p.set(f"k:{i}", "v")
    p.set("gone", "v")
    p.delete("gone")
    p.execute()
    assert r.dbsize() == 250
    # redis-py reads the cursor as an integer and sends it back.
    assert sorted(r.scan_iter(count=20)) == sorted(f"k:{i}".encode() for i in range(250))
    assert set(r.scan_iter(match="k:1*", count=7)) == {f"k:{i}".encode() for i in range(250) if str(i).startswith("1")}
    assert list(r.scan_iter(_type="hash")) == []
    assert sorted(r.keys("k:2?")) == sorted(f"k:{i}".encode() for i in range(20, 30))
    cursor, page = r.scan(0, count=5)
    assert cursor != 0 and len(page) <= 5
    expect_error(lambda: r.scan(123456789), "invalid cursor")
    assert r.flushdb() is True and r.dbsize() == 0 and r.get("k:1") is None


def single(host, port, token):
    for proto in (2, 3):
        r = redis.Redis(host=host, port=port, username="dev", password=token, protocol=proto)
        keyspace(r)
        strings(r)
        counters(r)
        expiry(r)
        pipelines(r)
        felix_extras(r)
        server(r)
        r.delete("p:n", "c:n", "c:f", "c:text", "x:k", "e:k")
        r.close()
    # Refusals, as Redis words them.
    expect_error(lambda: redis.Redis(host=host, port=port).get("k"), "Authentication required")
    expect_error(lambda: redis.Redis(host=host, port=port, password="not-a-token").ping(), "invalid username-password pair")


def cluster(nodes):
    startup = [ClusterNode(h, int(p)) for h, p in (n.rsplit(":", 1) for n in nodes)]
    rc = RedisCluster(startup_nodes=startup)
    for i in range(300):
        assert rc.set(f"rc:{i}", str(i)) is True
    for i in range(300):
        assert rc.get(f"rc:{i}") == str(i).encode(), i
    assert rc.incr("rc:{tag}n") == 1 and rc.incrby("rc:{tag}n", 2) == 3
    p = rc.pipeline()
    for i in range(100):
        p.incr(f"rc:p{i}")
    assert p.execute() == [1] * 100
    assert rc.keyslot("somekey") == 11058
    # A walk through one door covers every shard, each led by any broker.
    assert set(rc.scan_iter(match="rc:[0-9]*", count=50)) == {f"rc:{i}".encode() for i in range(300)}
    assert rc.dbsize() >= 401
    rc.close()


def tls(host, port, ca):
    # The chain and the name (an IP address in the certificate) are both
    # checked, as a client of a real deployment would.
    for protocol in (2, 3):
        r = redis.Redis(host=host, port=port, protocol=protocol, ssl=True,
                        ssl_ca_certs=ca, ssl_check_hostname=True)
        strings(r)
        pipelines(r)
        r.delete("p:n")
        r.close()
    # A client that does not trust the broker's CA is not served.
    untrusting = redis.Redis(host=host, port=port, ssl=True,
                             socket_timeout=10, socket_connect_timeout=10)
    expect_error(untrusting.ping, "certificate")
    # Nor is one that does not speak TLS.
    plain = redis.Redis(host=host, port=port, socket_timeout=10,
                        socket_connect_timeout=10, retry_on_timeout=False)
    try:
        plain.ping()
    except redis.RedisError:
        pass
    else:
        raise AssertionError("a plain TCP client was answered by the TLS door")


if __name__ == "__main__":
    if sys.argv[1] == "single":
        single(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "tls":
        tls(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        cluster(sys.argv[2:])
    print("ok")
