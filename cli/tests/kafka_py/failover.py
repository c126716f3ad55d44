"""A shard leader SIGKILLed under Kafka clients, driven by
cli/tests/kafka.rs: an idempotent confluent-kafka producer (acks=all)
writes while a group of two consumes; the Rust side kills the leader once
this prints "killing-time". Every acknowledged record must be consumed,
and no record consumed twice by the group overall.

  run BOOTSTRAP TOKEN TOPIC GROUP N

A consumer counts a record as consumed only once its offset is committed.
When a commit's outcome is unknown (the coordinator died under it), it
asks the coordinator what is committed: a later offset means the commit
landed; a refusal by the group (a rebalance took the partition) means the
next owner reads the record from the committed offset.
"""

import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from groups import conf, fail, send_numbered  # noqa: E402

# A commit whose outcome the group or librdkafka refuses (a rebalance, or
# a partition no longer assigned): the next owner reads the record again
# from the last committed offset, which `committed_past` checks first.
REFUSED = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._NO_OFFSET,
    KafkaError._STATE,
}


# Records one member handles per turn of the loop.
CONSUME_MAX = 100


def committed_past(c, m):
    tp = TopicPartition(m.topic(), m.partition())
    for _ in range(100):
        try:
            return c.committed([tp], timeout=5)[0].offset > m.offset()
        except KafkaException:
            time.sleep(0.2)
    fail("the committed offset of %s could not be read for 20 s" % tp)


def commit_once(c, m):
    """True once m's offset is committed; False if the group refused it."""
    for _ in range(200):
        try:
            c.commit(message=m, asynchronous=False)
            return True
        except KafkaException as e:
            err = e.args[0]
            if committed_past(c, m):
                return True
            if err.code() in REFUSED:
                return False
            time.sleep(0.1)
    fail("offset %d of partition %d never committed" % (m.offset(), m.partition()))


def run(bootstrap, token, topic, grp, n):
    n = int(n)
    acked, errors = set(), []
    p = Producer(
        conf(
            bootstrap,
            token,
            **{"enable.idempotence": True, "acks": "all", "linger.ms": 5, "message.timeout.ms": 120000},
        )
    )

    def done(err, msg):
        if err:
            errors.append(str(err))
        else:
            acked.add(int(msg.value()))

    def produce():
        told = False
        for i in range(n):
            send_numbered(p, topic, i, done)
            p.poll(0)
            if not told and len(acked) >= n // 4:
                print("killing-time", flush=True)
                told = True
            time.sleep(0.002)
        if not told:
            print("killing-time", flush=True)
        p.flush(180)

    producer = threading.Thread(target=produce)
    producer.start()
    members = []
    for _ in range(2):
        c = Consumer(
            conf(
                bootstrap,
                token,
                **{
                    "group.id": grp,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": 6000,
                    "heartbeat.interval.ms": 500,
                    "max.poll.interval.ms": 60000,
                    # librdkafka 2.16 can stall a member in join-state
                    # wait-metadata when the coordinator dies while the
                    # member waits for topic metadata: the topic arrives
                    # while it looks for the new coordinator, and it then
                    # waits for the next periodic refresh (5 min by
                    # default). A short refresh bounds the stall, as a
                    # user of a real Kafka cluster would configure it.
                    "topic.metadata.refresh.interval.ms": 2000,
                },
            )
        )
        c.subscribe([topic])
        members.append(c)
    consumed = {}
    deadline = time.time() + 240
    while time.time() < deadline:
        for who, c in enumerate(members):
            # A member without partitions would hold the loop for the
            # whole timeout of a one-record poll: take what is there.
            for m in c.consume(CONSUME_MAX, 0.05):
                if m.error():
                    # Partition EOF and transient broker errors are reported here.
                    continue
                v = int(m.value())
                if commit_once(c, m):
                    if v in consumed:
                        fail(
                            "record %d consumed twice: at %s by member %d, then at offset %d by member %d"
                            % (v, consumed[v][:2], consumed[v][2], m.offset(), who)
                        )
                    consumed[v] = (m.partition(), m.offset(), who)
        if not producer.is_alive() and acked and acked <= consumed.keys():
            break
    producer.join()
    if errors:
        fail("the producer gave up on %d records: %s" % (len(errors), errors[:3]))
    missing = acked - consumed.keys()
    if missing:
        fail("%d acknowledged records never consumed, e.g. %s" % (len(missing), sorted(missing)[:5]))
    for c in members:
        c.close()
    print("ok %d %d" % (len(acked), len(consumed)), flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"run": run}[mode](*args)
