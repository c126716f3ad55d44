"""Kafka clients other than a consumer group's, driven by
cli/tests/kafka.rs: kafka-python's admin, producer and consumer, and
confluent-kafka's idempotent producer. Exits non-zero, with the reason on
stderr, on the first thing that is not as Kafka would have it; prints
"ok" (or what the Rust side checks) on stdout.

  admin      BOOTSTRAP TOKEN   kafka-python: create, describe and alter configs, produce, consume in a group, delete the group and the topic
  idempotent BOOTSTRAP TOKEN TOPIC N   confluent-kafka, enable.idempotence=true, acks=all
  configs    BOOTSTRAP TOKEN TOPIC     confluent-kafka, IncrementalAlterConfigs
  positions  BOOTSTRAP TOKEN TOPIC     confluent-kafka from earliest, latest and a timestamp
"""

import sys
import time


def fail(why):
    print(why, file=sys.stderr, flush=True)
    sys.exit(1)


def admin(bootstrap, token):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import InvalidConfigurationError, TopicAlreadyExistsError

    auth = dict(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="dev",
        sasl_plain_password=token,
    )
    a = KafkaAdminClient(**auth)
    r = a.create_topics([NewTopic("adm", 2, 1, topic_configs={"retention.ms": "60000"})])
    for _topic, code, *_ in r.topic_errors:
        if code != 0:
            fail("create_topics: %s" % (r.topic_errors,))
    try:
        a.create_topics([NewTopic("adm", 2, 1)])
        fail("a second create of adm succeeded")
    except TopicAlreadyExistsError:
        pass
    try:
        a.create_topics([NewTopic("adm2", 1, 1, topic_configs={"min.insync.replicas": "2"})])
        fail("a config Felix does not serve was taken")
    except InvalidConfigurationError:
        pass
    def described():
        got = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "adm")])
        return {c[0]: c[1] for c in got[0].resources[0][4]}

    configs = described()
    if configs.get("retention.ms") != "60000" or configs.get("cleanup.policy") != "delete":
        fail("describe_configs: %s" % configs)
    # AlterConfigs replaces every configuration: retention.ms, not named,
    # is back to its default (-1, kept forever).
    r = a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "adm", configs={"retention.bytes": "1048576"})])
    if any(res[0] != 0 for res in r.resources):
        fail("alter_configs: %s" % (r.resources,))
    configs = described()
    if (configs.get("retention.bytes"), configs.get("retention.ms")) != ("1048576", "-1"):
        fail("describe_configs after alter_configs: %s" % configs)
    r = a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "adm", configs={"segment.ms": "1"})])
    if [res[0] for res in r.resources] != [40]:
        fail("alter_configs of a config Felix does not serve: %s" % (r.resources,))

    p = KafkaProducer(acks="all", **auth)
    for i in range(10):
        p.send("adm", key=b"k%d" % i, value=b"v%d" % i, partition=i % 2).get(timeout=30)
    p.flush()
    p.close()

    c = KafkaConsumer(
        "adm",
        group_id="kp",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=20000,
        **auth,
    )
    seen = set()
    for m in c:
        seen.add((m.partition, m.offset, m.value))
        if len(seen) == 10:
            break
    if {v for (_, _, v) in seen} != {b"v%d" % i for i in range(10)}:
        fail("consumed %s" % sorted(seen))
    c.commit()
    committed = [c.committed(tp) for tp in sorted(c.assignment())]
    if committed != [5, 5]:
        fail("committed %s" % committed)
    # A group with a member is not deleted.
    codes = [e.errno for _, e in a.delete_consumer_groups(["kp"])]
    if codes != [68]:
        fail("delete_consumer_groups of a group with a member: %s" % codes)
    c.close()
    groups = [g[0] for g in a.list_consumer_groups()]
    if "kp" not in groups:
        fail("list_consumer_groups: %s" % groups)
    offsets = a.list_consumer_group_offsets("kp")
    if sorted(o.offset for o in offsets.values()) != [5, 5]:
        fail("list_consumer_group_offsets: %s" % offsets)
    # Without members it is: its offsets go, and a second delete finds none.
    codes = [e.errno for _, e in a.delete_consumer_groups(["kp"])]
    if codes != [0]:
        fail("delete_consumer_groups: %s" % codes)
    if a.list_consumer_group_offsets("kp"):
        fail("offsets left after delete_consumer_groups: %s" % a.list_consumer_group_offsets("kp"))
    codes = [e.errno for _, e in a.delete_consumer_groups(["kp"])]
    if codes != [69]:
        fail("a second delete_consumer_groups: %s" % codes)

    a.delete_topics(["adm"])
    deadline = time.time() + 20
    while "adm" in a.list_topics():
        if time.time() > deadline:
            fail("adm still listed after delete_topics")
        time.sleep(0.2)
    a.close()
    print("ok")


def idempotent(bootstrap, token, topic, n):
    from confluent_kafka import Producer

    n = int(n)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "dev",
            "sasl.password": token,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
        }
    )
    errors, acked = [], []

    def done(err, msg):
        if err:
            errors.append(err)
        else:
            acked.append(msg.value())

    for i in range(n):
        p.produce(topic, key=b"k%d" % i, value=b"%d" % i, on_delivery=done)
        p.poll(0)
    if p.flush(60) != 0 or errors:
        fail("idempotent produce: %s" % errors[:3])
    if sorted(acked) != sorted(b"%d" % i for i in range(n)):
        fail("acked %d of %d" % (len(acked), n))
    print(len(acked))


def configs(bootstrap, token, topic):
    """confluent-kafka's IncrementalAlterConfigs: SET and DELETE change only
    what they name; a config Felix cannot honour and APPEND are refused.
    Ends with retention.ms=120000, which the Rust side reads natively."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from groups import conf

    a = AdminClient(conf(bootstrap, token))
    a.create_topics([NewTopic(topic, 1, 1, config={"retention.bytes": "4096"})])[topic].result(30)

    def alter(*entries):
        res = ConfigResource("topic", topic, incremental_configs=list(entries))
        return a.incremental_alter_configs([res])[res].result(30)

    def entry(name, value, op):
        return ConfigEntry(name, value, incremental_operation=op)

    def described():
        res = ConfigResource("topic", topic)
        return {k: v.value for k, v in a.describe_configs([res])[res].result(30).items()}

    alter(entry("retention.ms", "60000", AlterConfigOpType.SET))
    got = described()
    if (got.get("retention.ms"), got.get("retention.bytes")) != ("60000", "4096"):
        fail("after SET retention.ms: %s" % got)
    alter(entry("retention.bytes", None, AlterConfigOpType.DELETE))
    got = described()
    if (got.get("retention.ms"), got.get("retention.bytes")) != ("60000", "-1"):
        fail("after DELETE retention.bytes: %s" % got)
    for bad in (
        entry("cleanup.policy", "compact", AlterConfigOpType.SET),
        entry("retention.ms", "1", AlterConfigOpType.APPEND),
        entry("max.message.bytes", "1", AlterConfigOpType.SET),
    ):
        try:
            alter(bad)
            fail("%s was taken" % bad)
        except KafkaException as e:
            if e.args[0].code() != 40:
                fail("%s: %s, not INVALID_CONFIG" % (bad, e))
    # A refused change changes nothing.
    got = described()
    if (got.get("retention.ms"), got.get("retention.bytes")) != ("60000", "-1"):
        fail("after refused changes: %s" % got)
    alter(entry("retention.ms", "120000", AlterConfigOpType.SET))
    print("ok")


def positions(bootstrap, token, topic):
    """confluent-kafka consumers starting from the earliest record, from the
    latest (only what is written after), and from a timestamp (the first
    record at or after it, found with offsets_for_times)."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, Producer, TopicPartition

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from groups import conf

    base_ms = 1_700_000_000_000
    p = Producer(conf(bootstrap, token, **{"acks": "all"}))
    for i in range(10):
        p.produce(topic, value=b"%d" % i, partition=0, timestamp=base_ms + i * 1000)
    if p.flush(30) != 0:
        fail("the first ten records were not acknowledged")

    def consumer(start):
        c = Consumer(conf(bootstrap, token, **{"group.id": "positions", "enable.auto.commit": False}))
        c.assign([TopicPartition(topic, 0, start)])
        return c

    def first(c, each=None):
        """The first record `c` reads, calling `each` between polls."""
        deadline = time.time() + 30
        while time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                c.close()
                return (m.offset(), m.value())
            if each:
                each()
        c.close()
        fail("no record read in 30 s")

    if first(consumer(OFFSET_BEGINNING)) != (0, b"0"):
        fail("earliest did not start at offset 0")

    # From the latest: none of the ten, only records written after. When
    # the consumer resolves "latest" is its own affair, so records keep
    # coming until it reads one.
    def later():
        p.produce(topic, value=b"later", partition=0, timestamp=base_ms + 60_000)
        p.flush(30)

    offset, value = first(consumer(OFFSET_END), later)
    if offset < 10 or value != b"later":
        fail("latest read offset %d (%s), one of the records before it started" % (offset, value))
    c = Consumer(conf(bootstrap, token, **{"group.id": "positions"}))
    # Between records 4 and 5: the first at or after it is 5.
    at = c.offsets_for_times([TopicPartition(topic, 0, base_ms + 4500)], timeout=30)[0]
    c.close()
    if at.offset != 5:
        fail("offsets_for_times gave %d, not 5" % at.offset)
    if first(consumer(at.offset)) != (5, b"5"):
        fail("reading from the timestamp's offset did not start at 5")
    print("ok")


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"admin": admin, "idempotent": idempotent, "configs": configs, "positions": positions}[mode](*args)
