"""Kafka clients other than a consumer group's, driven by
cli/tests/kafka.rs: kafka-python's admin, producer and consumer, and
confluent-kafka's idempotent producer. Exits non-zero, with the reason on
stderr, on the first thing that is not as Kafka would have it; prints
"ok" (or what the Rust side checks) on stdout.

  admin      BOOTSTRAP TOKEN   kafka-python: create, describe, produce, consume in a group, delete
  idempotent BOOTSTRAP TOKEN TOPIC N   confluent-kafka, enable.idempotence=true, acks=all
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
    got = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "adm")])
    configs = {c[0]: c[1] for c in got[0].resources[0][4]}
    if configs.get("retention.ms") != "60000" or configs.get("cleanup.policy") != "delete":
        fail("describe_configs: %s" % configs)

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
    c.close()
    groups = [g[0] for g in a.list_consumer_groups()]
    if "kp" not in groups:
        fail("list_consumer_groups: %s" % groups)
    offsets = a.list_consumer_group_offsets("kp")
    if sorted(o.offset for o in offsets.values()) != [5, 5]:
        fail("list_consumer_group_offsets: %s" % offsets)

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


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"admin": admin, "idempotent": idempotent}[mode](*args)
