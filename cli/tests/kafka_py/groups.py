"""Consumer groups through the Kafka door with confluent-kafka (a recent
librdkafka), driven by cli/tests/kafka.rs. Exits non-zero, with the reason
on stderr, on the first thing that is not as Kafka would have it; prints
what the Rust side checks next on stdout.

  group  BOOTSTRAP TOKEN TOPIC GROUP   three members, one killed, one leaving
  member BOOTSTRAP TOKEN TOPIC GROUP   (a member run as its own process)
  resume BOOTSTRAP TOKEN TOPIC GROUP COMMITTED   after a broker restart
  static BOOTSTRAP TOKEN TOPIC GROUP   a static member restarts without a rebalance
"""

import os
import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

PARTITIONS = 3
RECORDS = 300
# Short enough that a killed member is noticed within the test's time.
SESSION_MS = 6000


def conf(bootstrap, token, **more):
    """Client settings; token "-" is a door without tokens (no SASL)."""
    c = {"bootstrap.servers": bootstrap}
    if token != "-":
        c.update(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "dev",
                "sasl.password": token,
            }
        )
    c.update(more)
    return c


def fail(why):
    print(why, file=sys.stderr, flush=True)
    sys.exit(1)


def consumer(bootstrap, token, group, **more):
    return Consumer(
        conf(
            bootstrap,
            token,
            **{
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": SESSION_MS,
                "heartbeat.interval.ms": 500,
                "max.poll.interval.ms": 30000,
                **more,
            },
        )
    )


def produce(bootstrap, token, topic, start, n):
    p = Producer(conf(bootstrap, token, **{"acks": "all", "linger.ms": 5}))
    errors = []
    for i in range(start, start + n):
        p.produce(
            topic,
            key=b"k%d" % i,
            value=b"v%d" % i,
            partition=i % PARTITIONS,
            on_delivery=lambda err, msg: err and errors.append(err),
        )
    if p.flush(30) != 0 or errors:
        fail("produce: %s" % errors)


def send_numbered(p, topic, i, done):
    """Record i (key k<i>, value <i>), waiting while the producer's queue
    is full rather than failing."""
    while True:
        try:
            p.produce(topic, key=b"k%d" % i, value=b"%d" % i, on_delivery=done)
            return
        except BufferError:
            p.poll(0.05)


# A commit the group refuses while it rebalances: the record is not
# counted, and whoever owns its partition next reads it again.
REFUSED = {KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID}


def take(c, taking=None):
    """One record from `c` once its offset is committed, or None.
    `taking(m)` is told of a record before its commit is sent."""
    m = c.poll(0.1)
    if m is None:
        return None
    if m.error():
        fail("consume: %s" % m.error())
    if taking:
        taking(m)
    try:
        c.commit(message=m, asynchronous=False)
    except KafkaException as e:
        if e.args[0].code() in REFUSED:
            return None
        raise
    return (m.partition(), m.offset(), m.value())


def until(what, secs, f, why=lambda: ""):
    end = time.time() + secs
    while time.time() < end:
        if f():
            return
    fail("timed out: %s %s" % (what, why()))


def group(bootstrap, token, topic, grp):
    produce(bootstrap, token, topic, 0, RECORDS)
    got = {}  # (partition, offset) -> value, over every member

    def note(rec, who):
        if rec is None:
            return
        p, o, v = rec
        if (p, o) in got:
            fail("(%d, %d) consumed twice (again by %s)" % (p, o, who))
        got[(p, o)] = v

    # The third member is its own process, to be SIGKILLed.
    child = subprocess.Popen(
        [sys.executable, __file__, "member", bootstrap, token, topic, grp],
        stdout=subprocess.PIPE,
    )
    os.set_blocking(child.stdout.fileno(), False)
    a, b = consumer(bootstrap, token, grp), consumer(bootstrap, token, grp)
    a.subscribe([topic])
    b.subscribe([topic])
    child_lines = []
    # Records the child was committing when last heard of.
    child_taking = {}

    def child_records():
        chunk = (child.stdout.read() or b"").decode()
        child_lines.append(chunk)
        lines = "".join(child_lines).split("\n")
        child_lines[:] = [lines[-1]]
        for line in lines[:-1]:
            if line.startswith("? "):
                p, o, v = line[2:].split(" ")
                child_taking[(int(p), int(o))] = v.encode()
                continue
            p, o, v = line.split(" ")
            child_taking.pop((int(p), int(o)), None)
            note((int(p), int(o), v.encode()), "the killed member")

    from_child = []

    def all_three_read():
        note(take(a), "a")
        note(take(b), "b")
        before = len(got)
        child_records()
        if len(got) > before:
            from_child.append(len(got) - before)
        return len(a.assignment()) == 1 and len(b.assignment()) == 1 and from_child and len(got) > 30

    # Every member owns one partition and the third has read some.
    until("three members of one partition each", 60, all_three_read)
    owned = {tp.partition for tp in a.assignment()} | {tp.partition for tp in b.assignment()}
    if len(owned) != 2:
        fail("a and b own %s" % owned)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child_records()
    # Killed between its commit and its report: the record counts if the
    # commit landed (no one commits that partition until it is reassigned).
    for (p, o), v in child_taking.items():
        if a.committed([TopicPartition(topic, p)], timeout=10)[0].offset > o:
            note((p, o, v), "the killed member")
    killed_at = len(got)
    # Its partition comes back to a or b once its session runs out.
    until(
        "the killed member's partition reassigned",
        SESSION_MS / 1000 + 40,
        lambda: (note(take(a), "a"), note(take(b), "b"), len(a.assignment()) + len(b.assignment()) == PARTITIONS)[-1],
    )
    # b leaves: a gets everything.
    b.close()
    until("a owns every partition", 40, lambda: (note(take(a), "a"), len(a.assignment()) == PARTITIONS)[-1])
    want = {(i % PARTITIONS, i // PARTITIONS): b"v%d" % i for i in range(RECORDS)}
    until(
        "every record consumed",
        60,
        lambda: (note(take(a), "a"), len(got) == RECORDS)[-1],
        lambda: "(%d of %d; missing e.g. %s)" % (len(got), RECORDS, sorted(set(want) - set(got))[:8]),
    )
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        fail("consumed %d of %d; missing e.g. %s" % (len(got), RECORDS, missing))
    committed = a.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    offsets = [tp.offset for tp in committed]
    if offsets != [RECORDS // PARTITIONS] * PARTITIONS:
        fail("committed %s" % offsets)
    a.close()
    print("killed-after %d" % killed_at, file=sys.stderr)
    print(",".join(str(o) for o in offsets))


def member(bootstrap, token, topic, grp):
    c = consumer(bootstrap, token, grp)
    c.subscribe([topic])
    def taking(m):
        # Its commit may land with this process killed before the line
        # below: the parent then asks the group what was committed.
        print("? %d %d %s" % (m.partition(), m.offset(), m.value().decode()), flush=True)

    while True:
        rec = take(c, taking)
        if rec is not None:
            # Printed only once committed: what it printed is not read again.
            print("%d %d %s" % (rec[0], rec[1], rec[2].decode()), flush=True)


def resume(bootstrap, token, topic, grp, committed):
    want = [int(x) for x in committed.split(",")]
    produce(bootstrap, token, topic, RECORDS, 30)
    c = consumer(bootstrap, token, grp)
    c.subscribe([topic])
    got = []
    until("the 30 new records", 60, lambda: (got.append(take(c)), len([g for g in got if g]) == 30)[-1])
    got = [g for g in got if g]
    for p in range(PARTITIONS):
        first = min(o for (q, o, _) in got if q == p)
        if first != want[p]:
            fail("partition %d resumed at %d, committed %d" % (p, first, want[p]))
    values = sorted(v for (_, _, v) in got)
    if values != sorted(b"v%d" % i for i in range(RECORDS, RECORDS + 30)):
        fail("resumed with %s" % values[:5])
    c.close()
    print("ok")


def static(bootstrap, token, topic, grp):
    """A static member (group.instance.id) restarts within its session:
    it gets its partitions back and the other member never gives its own
    up (no rebalance). Prints the restarted member's partitions."""
    revoked = []

    def parts(c):
        return sorted(tp.partition for tp in c.assignment())

    def settled(*cs):
        for c in cs:
            c.poll(0.1)
        got = [parts(c) for c in cs]
        return all(got) and sorted(sum(got, [])) == list(range(PARTITIONS))

    # b joins first and leads: a leader's return rebalances by design
    # (docs/kafka.md), a follower's must not.
    b = consumer(bootstrap, token, grp)
    b.subscribe([topic], on_revoke=lambda _c, ps: revoked.append([tp.partition for tp in ps]))
    until("b alone is assigned everything", 60, lambda: settled(b))
    a = consumer(bootstrap, token, grp, **{"group.instance.id": "pod-a"})
    a.subscribe([topic])
    until("the group of two settles", 60, lambda: settled(a, b))
    before, b_before = parts(a), parts(b)
    revoked.clear()
    # A static member does not leave on close: its place is kept for it.
    a.close()
    a = consumer(bootstrap, token, grp, **{"group.instance.id": "pod-a"})
    a.subscribe([topic])
    until("the restarted member is assigned", 30, lambda: settled(a, b))
    if parts(a) != before or parts(b) != b_before:
        fail("after the restart a has %s (had %s), b %s (had %s)" % (parts(a), before, parts(b), b_before))
    # A rebalance the restart started would have revoked b's partitions
    # on its next heartbeat (every 0.5 s): give it a few.
    end = time.time() + 2
    while time.time() < end:
        a.poll(0.1)
        b.poll(0.1)
    if revoked:
        fail("the other member gave up %s: the restart rebalanced" % revoked)
    a.close()
    b.close()
    print(",".join(str(p) for p in before), flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"group": group, "member": member, "resume": resume, "static": static}[mode](*args)
