package tenants

import "testing"

// TestSameKafkaEndpointCA: a CA sent back by a browser's form (CRLF line
// ends, blank space around it) is the CA stored, so the password stays;
// another CA is not.
func TestSameKafkaEndpointCA(t *testing.T) {
	const ca = "-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n"
	k := func(ca string) *Kafka {
		return &Kafka{Brokers: []string{"k:9093"}, Topic: "t", TLS: true, CA: ca, SASL: &KafkaSASL{Mechanism: SASLPlain, Username: "u"}}
	}
	if !sameKafkaEndpoint(k(ca), k("  -----BEGIN CERTIFICATE-----\r\nMIIB\r\nAAAA\r\n-----END CERTIFICATE-----\r\n\r\n")) {
		t.Error("the same CA with CRLF line ends is another endpoint")
	}
	if sameKafkaEndpoint(k(ca), k("-----BEGIN CERTIFICATE-----\nMIIC\nAAAA\n-----END CERTIFICATE-----\n")) {
		t.Error("another CA is the same endpoint")
	}
}
