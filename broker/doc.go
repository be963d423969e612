// Package broker owns Roost's MQTT data plane: the ingress that reads each
// connection's CONNECT, authenticates the device against the directory and
// hands the connection to its tenant's own mochi-mqtt instance; the
// per-tenant instances and their lifecycle; and the hooks that bind client
// ids, enforce topic access rules on publish, subscribe and delivery, and
// track presence.
//
// Tenants are isolated structurally: each has its own *mqtt.Server, so no
// topic, retained message, session or Will can cross from one to another.
package broker
