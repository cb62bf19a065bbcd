/* A sleepy field device on Eclipse Paho C (libpaho-mqtt3c, synchronous API), as firmware writes
 * it: a persistent session, subscribe on the first wake only, a request, sleep (disconnect),
 * wake, take the final reply, acknowledge it.
 *
 * Usage: paho_c_device HOST:PORT DEVICE_ID 5|311
 * Prints one JSON line: {"client", "present": [first wake, second wake], "statuses": [...],
 * "acked": bool}; exits non-zero on any failure. It knows the Roost topics and payloads, nothing
 * of the gateway's code.
 *
 * Paho C's synchronous API reports Session Present for MQTT 3.1.1 only (MQTTClient.c fills
 * `returned.sessionPresent` when the version is 4), so like firmware that keeps a flag in RTC
 * memory, this device subscribes because it is its first wake, and reports `null` for MQTT 5.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <MQTTClient.h>

static int v5;
static char id[80], uri[128], reply_filter[128], req_topic[128], ack_topic[128];
static const char corr[] = "paho-c-1";

static void fail(const char *what, int rc) {
    fprintf(stderr, "paho_c_device: %s failed (%d)\n", what, rc);
    exit(1);
}

/* The status code in a CBOR reply: the value after the text key "status". */
static int status_of(const unsigned char *p, int len) {
    for (int i = 0; i + 8 < len; i++) {
        if (p[i] == 0x66 && memcmp(p + i + 1, "status", 6) == 0) {
            unsigned char v = p[i + 7];
            if (v == 0x18) return p[i + 8];
            if (v == 0x19) return (p[i + 8] << 8) | p[i + 9];
            if (v < 0x18) return v;
        }
    }
    return -1;
}

static int carries_corr(MQTTClient_message *m) {
    if (v5) {
        MQTTProperty *c = MQTTProperties_getProperty(&m->properties, MQTTPROPERTY_CODE_CORRELATION_DATA);
        return c && c->value.data.len == (int)strlen(corr) && memcmp(c->value.data.data, corr, strlen(corr)) == 0;
    }
    const char *p = m->payload;
    for (int i = 0; i + (int)strlen(corr) <= m->payloadlen; i++)
        if (memcmp(p + i, corr, strlen(corr)) == 0) return 1;
    return 0;
}

static MQTTClient wake(int *present) {
    MQTTClient client;
    MQTTClient_createOptions create = MQTTClient_createOptions_initializer;
    create.MQTTVersion = v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    int rc = MQTTClient_createWithOptions(&client, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &create);
    if (rc != MQTTCLIENT_SUCCESS) fail("create", rc);
    if (v5) {
        MQTTClient_connectOptions opts = MQTTClient_connectOptions_initializer5;
        opts.keepAliveInterval = 20;
        opts.cleanstart = 0;
        MQTTProperties props = MQTTProperties_initializer;
        MQTTProperty expiry = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
        expiry.value.integer4 = 3600;
        MQTTProperties_add(&props, &expiry);
        MQTTResponse r = MQTTClient_connect5(client, &opts, &props, NULL);
        if (r.reasonCode != 0) fail("connect5", r.reasonCode);
        *present = -1; /* not reported for MQTT 5, see above */
        MQTTResponse_free(r);
        MQTTProperties_free(&props);
    } else {
        MQTTClient_connectOptions opts = MQTTClient_connectOptions_initializer;
        opts.keepAliveInterval = 20;
        opts.cleansession = 0;
        opts.MQTTVersion = MQTTVERSION_3_1_1;
        rc = MQTTClient_connect(client, &opts);
        if (rc != MQTTCLIENT_SUCCESS) fail("connect", rc);
        *present = opts.returned.sessionPresent;
    }
    return client;
}

static void publish(MQTTClient client, const char *topic, const unsigned char *payload, int len) {
    MQTTClient_message m = MQTTClient_message_initializer;
    m.payload = (void *)payload;
    m.payloadlen = len;
    m.qos = 1;
    MQTTClient_deliveryToken token;
    int rc;
    if (v5) {
        MQTTProperty c = {.identifier = MQTTPROPERTY_CODE_CORRELATION_DATA};
        c.value.data.data = (char *)corr;
        c.value.data.len = strlen(corr);
        MQTTProperties_add(&m.properties, &c);
        MQTTResponse r = MQTTClient_publishMessage5(client, topic, &m, &token);
        rc = r.reasonCode;
        MQTTResponse_free(r);
        MQTTProperties_free(&m.properties);
    } else {
        rc = MQTTClient_publishMessage(client, topic, &m, &token);
    }
    if (rc != 0) fail("publish", rc);
    rc = MQTTClient_waitForCompletion(client, token, 10000);
    if (rc != MQTTCLIENT_SUCCESS) fail("publish completion", rc);
}

/* Waits (bounded) for a reply to our request with status `want`; records what came. */
static void await_status(MQTTClient client, int want, int *statuses, int *n) {
    for (int tries = 0; tries < 40; tries++) {
        char *topic = NULL;
        int topic_len = 0;
        MQTTClient_message *m = NULL;
        int rc = MQTTClient_receive(client, &topic, &topic_len, &m, 1000);
        if (rc != MQTTCLIENT_SUCCESS && rc != MQTTCLIENT_TOPICNAME_TRUNCATED) fail("receive", rc);
        if (!m) continue;
        int status = carries_corr(m) ? status_of(m->payload, m->payloadlen) : -1;
        MQTTClient_freeMessage(&m);
        MQTTClient_free(topic);
        if (status < 0) continue;
        if (*n < 16) statuses[(*n)++] = status;
        if (status == want) return;
    }
    fail("waiting for a reply", want);
}

static void sleep_now(MQTTClient client) {
    if (v5) MQTTClient_disconnect5(client, 1000, MQTTREASONCODE_NORMAL_DISCONNECTION, NULL);
    else MQTTClient_disconnect(client, 1000);
    MQTTClient_destroy(&client);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: paho_c_device HOST:PORT DEVICE_ID 5|311\n");
        return 2;
    }
    v5 = strcmp(argv[3], "5") == 0;
    snprintf(id, sizeof id, "%s", argv[2]);
    snprintf(uri, sizeof uri, "tcp://%s", argv[1]);
    snprintf(reply_filter, sizeof reply_filter, "devices/%s/reply/#", id);
    snprintf(req_topic, sizeof req_topic, "devices/%s/req/stats", id);
    snprintf(ack_topic, sizeof ack_topic, "devices/%s/ack", id);
    /* {"values": [1, 2, 3]}; 3.1.1: {"corr": h'paho-c-1', "args": {"values": [1, 2, 3]}} */
    static const unsigned char args[] = {0xA1, 0x66, 'v', 'a', 'l', 'u', 'e', 's', 0x83, 1, 2, 3};
    unsigned char request[64], ack[32];
    int request_len = 0, ack_len = 0;
    if (v5) {
        memcpy(request, args, sizeof args);
        request_len = sizeof args;
    } else {
        unsigned char corr_item[16] = {0x40 | (unsigned char)strlen(corr)};
        memcpy(corr_item + 1, corr, strlen(corr));
        int corr_len = 1 + strlen(corr);
        request[request_len++] = 0xA2;
        request[request_len++] = 0x64;
        memcpy(request + request_len, "corr", 4), request_len += 4;
        memcpy(request + request_len, corr_item, corr_len), request_len += corr_len;
        request[request_len++] = 0x64;
        memcpy(request + request_len, "args", 4), request_len += 4;
        memcpy(request + request_len, args, sizeof args), request_len += sizeof args;
        ack[ack_len++] = 0xA1;
        ack[ack_len++] = 0x64;
        memcpy(ack + ack_len, "corr", 4), ack_len += 4;
        memcpy(ack + ack_len, corr_item, corr_len), ack_len += corr_len;
    }

    int present[2], statuses[16], n = 0;
    /* Wake 1: subscribe once, request, take the 202, sleep. */
    MQTTClient client = wake(&present[0]);
    if (present[0] <= 0) { /* no session (3.1.1 says so; for 5 this is our first wake) */
        int rc;
        if (v5) {
            MQTTSubscribe_options opts = MQTTSubscribe_options_initializer;
            MQTTResponse r = MQTTClient_subscribe5(client, reply_filter, 1, &opts, NULL);
            rc = r.reasonCode == 1 ? 0 : r.reasonCode;
            MQTTResponse_free(r);
        } else {
            rc = MQTTClient_subscribe(client, reply_filter, 1);
        }
        if (rc != 0) fail("subscribe", rc);
    }
    publish(client, req_topic, request, request_len);
    await_status(client, 202, statuses, &n);
    sleep_now(client);
    /* Wake 2: no subscribe; the session brings the final reply; ack it. */
    client = wake(&present[1]);
    await_status(client, 200, statuses, &n);
    publish(client, ack_topic, ack, ack_len);
    sleep_now(client);

    const char *shown[] = {"null", "false", "true"};
    printf("{\"client\": \"paho-c-%s\", \"present\": [%s, %s], \"statuses\": [", argv[3],
           shown[present[0] + 1], shown[present[1] + 1]);
    for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", statuses[i]);
    printf("], \"acked\": true}\n");
    return 0;
}
