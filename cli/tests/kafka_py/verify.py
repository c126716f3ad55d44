"""What Kafka's verifiable producer and consumer check, with confluent-kafka
(the kafkatest tools are not in its wheel), driven by cli/tests/kafka.rs:

  run BOOTSTRAP TOKEN TOPIC GROUP N

An idempotent producer (acks=all) sends N records and every one must be
acknowledged. A group of two consumers then reads the topic from the
start, committing synchronously after each batch it takes. Checked:
every acknowledged record is consumed once (no loss, no duplicate), each
partition's offsets are dense from 0 in the order acknowledged, and the
group's committed offset of each partition ends at its high watermark.
Prints "ok N".
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from groups import REFUSED, conf, fail, send_numbered  # noqa: E402

# Records one member takes per turn of the loop.
CONSUME_MAX = 1000
# How long the group has to consume everything.
DRAIN_S = 240


def produce(bootstrap, token, topic, n):
    """{partition: [(offset, value), ...]} of every acknowledged record."""
    acked, errors = {}, []
    p = Producer(conf(bootstrap, token, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5}))

    def done(err, msg):
        if err:
            errors.append(str(err))
        else:
            acked.setdefault(msg.partition(), []).append((msg.offset(), int(msg.value())))

    for i in range(n):
        send_numbered(p, topic, i, done)
        p.poll(0)
    left = p.flush(120)
    if left or errors:
        fail("%d records not acknowledged, errors %s" % (left, errors[:3]))
    count = sum(len(v) for v in acked.values())
    if count != n:
        fail("%d of %d acknowledged" % (count, n))
    return acked


def run(bootstrap, token, topic, grp, n):
    n = int(n)
    acked = produce(bootstrap, token, topic, n)
    for part, recs in acked.items():
        offsets = sorted(o for o, _ in recs)
        if offsets != list(range(len(recs))):
            fail("partition %d: acknowledged offsets are not dense from 0" % part)
    members = [
        Consumer(
            conf(
                bootstrap,
                token,
                **{
                    "group.id": grp,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                },
            )
        )
        for _ in range(2)
    ]
    for c in members:
        c.subscribe([topic])
    consumed = {}  # value -> (partition, offset)
    last = {}  # partition -> last offset consumed
    deadline = time.time() + DRAIN_S
    while len(consumed) < n and time.time() < deadline:
        for c in members:
            msgs = [m for m in c.consume(CONSUME_MAX, 0.05) if not m.error()]
            if not msgs:
                continue
            # A batch counts once its offsets are committed; one the group
            # refuses mid-rebalance is read again by the partition's next
            # owner from the last committed offset.
            try:
                c.commit(asynchronous=False)
            except KafkaException as e:
                if e.args[0].code() in REFUSED:
                    continue
                raise
            for m in msgs:
                v, part, off = int(m.value()), m.partition(), m.offset()
                if v in consumed:
                    fail("record %d consumed twice (at %s and %d/%d)" % (v, consumed[v], part, off))
                if off != last.get(part, -1) + 1:
                    fail("partition %d: offset %d after %d" % (part, off, last.get(part, -1)))
                consumed[v] = (part, off)
                last[part] = off
    if len(consumed) != n:
        fail("%d of %d acknowledged records consumed" % (len(consumed), n))
    for part, recs in acked.items():
        for off, v in recs:
            if consumed[v] != (part, off):
                fail("record %d acknowledged at %d/%d, consumed at %s" % (v, part, off, consumed[v]))
    tps = [TopicPartition(topic, p) for p in acked]
    for tp in members[0].committed(tps, timeout=30):
        if tp.offset != len(acked[tp.partition]):
            fail("partition %d: committed %d, high watermark %d" % (tp.partition, tp.offset, len(acked[tp.partition])))
    for c in members:
        c.close()
    print("ok %d" % n, flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"run": run}[mode](*args)
